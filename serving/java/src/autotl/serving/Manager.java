package autotl.serving;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import java.util.NavigableSet;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import autotl.serving.MetaGraph.Signature;
import autotl.serving.Model.Input;

/**
 * The model's versions, the TF Serving way: {@code BASE_DIR/<n>/} folders, the version policy picks
 * which are served, and a poll every {@code pollSeconds} loads new ones and unloads the ones the policy
 * drops. A new version is loaded, warmed up with a tiny image through each signature, and only then
 * takes requests; the versions it replaces are retired (requests in flight finish on them, then they are
 * closed). A version that fails to load or warm up is refused with its reason logged and shown in the
 * status, and is not tried again until its folder changes; the versions already served keep serving,
 * and the last available version is never unloaded for want of a successor. Each served version has its
 * own deployment row in the lineage, from its loading to its unloading.
 */
final class Manager implements AutoCloseable {
    /** A 2x2 PNG to warm the bytes signature up (the first run of a graph is slow). */
    private static final byte[] WARM_PNG = Base64.getDecoder().decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAE0lEQVR4nGP438AARAwMDf+BCAAp8gX9AiY2+QAAAABJRU5ErkJggg==");
    private static final int KEEP_STATES = 100;

    /** What the command line says about the model and how to run it. */
    record Settings(String name, Path base, Path single, VersionPolicy policy, Map<String, Long> labels, int pollSeconds,
                    byte[] configProto, int maxRuns, Rest.Limits limits, Batcher.Config batching) {}

    /** A version's state in TF Serving's terms (START, LOADING, AVAILABLE, UNLOADING, END) and its error, if any. */
    record State(String state, String errorCode, String errorMessage) {
        static State of(String state) {
            return new State(state, "OK", "");
        }
    }

    /** Where the service listens, for the lineage rows. */
    private record Site(String url, String host, int port, String machine, long pid, String service) {}

    private final Settings settings;
    private final Metrics metrics;
    private final Lineage lineage;
    private final String service;
    private final Map<Long, State> states = new ConcurrentSkipListMap<>(Comparator.reverseOrder());
    private final Map<Long, String> refused = new HashMap<>(); // version -> its folder's fingerprint when refused
    private volatile NavigableMap<Long, Servable> available = Collections.emptyNavigableMap();
    private volatile Site site;
    private volatile boolean closing;
    private ScheduledExecutorService poller;

    Manager(Settings settings, Metrics metrics, Lineage lineage, String service) {
        this.settings = settings;
        this.metrics = metrics;
        this.lineage = lineage;
        this.service = service;
        metrics.gauge(this::gauges);
    }

    String name() {
        return settings.name();
    }

    /** Load what the policy asks for; an IOException when no version could be loaded. Then poll, if asked. */
    void start() throws IOException {
        sync();
        if (available.isEmpty()) {
            List<String> why = new ArrayList<>();
            states.forEach((v, s) -> why.add("version " + v + ": " + s.errorMessage()));
            throw new IOException(why.isEmpty()
                    ? "no version folder in " + settings.base() + " matches --version-policy " + settings.policy()
                    + " (version folders are BASE_DIR/1/, BASE_DIR/2/, ...)"
                    : "no version could be loaded: " + String.join("; ", why));
        }
        if (settings.base() != null && settings.pollSeconds() > 0) {
            poller = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "version-poll");
                t.setDaemon(true);
                return t;
            });
            poller.scheduleWithFixedDelay(this::poll, settings.pollSeconds(), settings.pollSeconds(), TimeUnit.SECONDS);
        }
    }

    private void poll() {
        try {
            sync();
        } catch (Throwable e) { // never let the poller die: the next poll tries again
            System.err.println(Main.SERVICE + ": polling " + settings.base() + " failed: " + e);
        }
    }

    /** One round: load the aspired versions not yet served, then retire the served ones no longer aspired. */
    synchronized void sync() throws IOException {
        if (closing) {
            return;
        }
        NavigableMap<Long, Path> present = settings.base() == null ? new TreeMap<>(Map.of(1L, settings.single()))
                : VersionPolicy.scan(settings.base());
        for (Long v : settings.policy().aspired(candidates(present)).descendingSet()) {
            if (!available.containsKey(v)) {
                load(v, present.get(v));
            }
        }
        NavigableSet<Long> aspired = settings.policy().aspired(candidates(present));
        NavigableMap<Long, Servable> now = available;
        // none of the aspired versions serves (they failed, or their folders are gone): the newest one serves on
        Long last = aspired.stream().anyMatch(now::containsKey) || now.isEmpty() ? null : now.lastKey();
        for (Servable s : List.copyOf(now.values())) {
            if (!aspired.contains(s.version) && !Long.valueOf(s.version).equals(last)) {
                retire(s);
            }
        }
    }

    /** Present versions, but those refused whose folder has not changed since. */
    private Set<Long> candidates(NavigableMap<Long, Path> present) {
        Set<Long> out = new TreeSet<>();
        for (Map.Entry<Long, Path> e : present.entrySet()) {
            String was = refused.get(e.getKey());
            if (was == null || !was.equals(fingerprint(e.getValue()))) {
                out.add(e.getKey());
            }
        }
        return out;
    }

    /** The modification times of the folder and its graph file: a version copied in place changes them. */
    static String fingerprint(Path dir) {
        StringBuilder sb = new StringBuilder();
        for (Path p : new Path[] {dir, dir.resolve("savedmodel"), dir.resolve(Model.GRAPH_FILE),
            dir.resolve("savedmodel").resolve(Model.GRAPH_FILE)}) {
            try {
                sb.append(Files.getLastModifiedTime(p).toMillis()).append('/').append(Files.size(p)).append(';');
            } catch (NoSuchFileException e) {
                sb.append("-;");
            } catch (IOException e) {
                sb.append("?;");
            }
        }
        return sb.toString();
    }

    private void load(long version, Path dir) {
        states.put(version, State.of("LOADING"));
        long t0 = System.nanoTime();
        Model model = null;
        try {
            Path savedModel = Model.resolve(dir);
            model = Model.load(savedModel, settings.configProto(), settings.maxRuns(), 30);
            warmUp(model);
            double seconds = (System.nanoTime() - t0) / 1e9;
            Model m = model;
            Batcher batcher = new Batcher(m::run, settings.batching(), metrics, settings.name() + "-v" + version);
            Servable s = new Servable(version, m, batcher, new Rest(m, settings.limits()), seconds, describe(m, version),
                    this::closed);
            refused.remove(version);
            publish(s);
            System.out.println(Main.SERVICE + ": version " + version + " of \"" + settings.name() + "\" available: "
                    + savedModel + " (sha256 " + m.sha256 + "), loaded and warmed up in "
                    + String.format(java.util.Locale.ROOT, "%.2f", seconds) + " s");
            System.out.flush();
        } catch (Exception | OutOfMemoryError | StackOverflowError e) {
            if (model != null) {
                model.close();
            }
            String reason = e instanceof HttpError h ? "it fails on a tiny image: " + h.getMessage() : e.getMessage();
            reason = reason == null ? e.getClass().getSimpleName() : firstLine(reason);
            refused.put(version, fingerprint(dir));
            keep(version, new State("END", "UNKNOWN", reason));
            metrics.loaded(false);
            Map.Entry<Long, Servable> serving = available.lastEntry();
            System.err.println(Main.SERVICE + ": version " + version + " of \"" + settings.name() + "\" refused: " + reason
                    + (serving == null ? "" : "; version " + serving.getKey() + " keeps serving"));
            System.err.flush();
        }
    }

    private static String firstLine(String s) {
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl);
    }

    /** Make a loaded version take requests, and give it its deployment row. */
    private void publish(Servable s) {
        Site where = site;
        if (where != null && lineage != null) {
            try {
                record(s, where);
            } catch (DbException e) {
                System.err.println(Main.SERVICE + ": cannot record version " + s.version + "'s deployment in "
                        + lineage.shown + ": " + e.getMessage());
            }
        }
        NavigableMap<Long, Servable> next = new TreeMap<>(available);
        next.put(s.version, s);
        available = Collections.unmodifiableNavigableMap(next);
        keep(s.version, State.of("AVAILABLE"));
        metrics.loaded(true);
    }

    private void retire(Servable s) {
        NavigableMap<Long, Servable> next = new TreeMap<>(available);
        next.remove(s.version);
        available = Collections.unmodifiableNavigableMap(next);
        keep(s.version, State.of("UNLOADING"));
        System.out.println(Main.SERVICE + ": version " + s.version + " of \"" + settings.name() + "\" unloading after "
                + s.inUse() + " request(s) in flight on it");
        System.out.flush();
        s.retire();
    }

    /** Called once a retired version's last request has ended and it is closed. */
    private void closed(Servable s) {
        long version = s.version;
        recordStop(s);
        keep(version, State.of("END"));
        metrics.unloaded();
        System.out.println(Main.SERVICE + ": version " + version + " of \"" + settings.name() + "\" unloaded");
        System.out.flush();
    }

    private void keep(long version, State state) {
        states.put(version, state);
        while (states.size() > KEEP_STATES) {
            Long oldest = ((ConcurrentSkipListMap<Long, State>) states).lastKey();
            if (available.containsKey(oldest)) {
                break;
            }
            states.remove(oldest);
        }
    }

    // ------------------------------------------------------------------ requests

    /**
     * The version a request goes to, with a reference taken (release it when answered): {@code version},
     * or the one {@code label} names, or the newest available.
     */
    Servable lease(Long version, String label) throws HttpError {
        while (true) {
            NavigableMap<Long, Servable> now = available;
            Servable s;
            if (label != null) {
                Long v = settings.labels().get(label);
                if (v == null) {
                    throw new HttpError(404, "no label \"" + Json.clip(label) + "\" for model \"" + settings.name() + "\""
                            + (settings.labels().isEmpty() ? "; start the service with --label NAME=VERSION"
                            : "; labels: " + settings.labels()));
                }
                s = now.get(v);
                if (s == null) {
                    throw new HttpError(404, "label \"" + Json.clip(label) + "\" names version " + v + ", which is "
                            + describeState(v));
                }
            } else if (version != null) {
                s = now.get(version);
                if (s == null) {
                    throw new HttpError(404, "version " + version + " of model \"" + settings.name() + "\" is "
                            + describeState(version) + "; available: " + now.keySet());
                }
            } else {
                Map.Entry<Long, Servable> e = now.lastEntry();
                if (e == null) {
                    throw new HttpError(503, "no version of model \"" + settings.name() + "\" is available", false, true);
                }
                s = e.getValue();
            }
            if (s.retain()) {
                return s;
            }
        }
    }

    private String describeState(long version) {
        State st = states.get(version);
        if (st == null) {
            return "not served (no such version folder, or not chosen by --version-policy " + settings.policy() + ")";
        }
        return "not available (" + st.state() + (st.errorMessage().isEmpty() ? "" : ": " + st.errorMessage()) + ")";
    }

    /** TF Serving's {@code model_version_status}: every version known, newest first, or only {@code version}. */
    Map<String, Object> status(Long version, boolean draining) throws HttpError {
        List<Object> out = new ArrayList<>();
        for (Map.Entry<Long, State> e : states.entrySet()) {
            if (version != null && !version.equals(e.getKey())) {
                continue;
            }
            State st = e.getValue();
            Map<String, Object> status = new LinkedHashMap<>();
            status.put("error_code", st.errorCode());
            status.put("error_message", st.errorMessage());
            Map<String, Object> one = new LinkedHashMap<>();
            one.put("version", Long.toString(e.getKey()));
            one.put("state", draining && st.state().equals("AVAILABLE") ? "UNLOADING" : st.state());
            one.put("status", status);
            out.add(one);
        }
        if (out.isEmpty() && version != null) {
            throw new HttpError(404, "version " + version + " of model \"" + settings.name() + "\" is " + describeState(version));
        }
        return Map.of("model_version_status", out);
    }

    NavigableMap<Long, Servable> available() {
        return available;
    }

    Map<String, Long> labels() {
        return settings.labels();
    }

    // ------------------------------------------------------------------ lineage

    /** Record a deployment row for each version served now, and for each loaded later. */
    void deployedAt(String url, String host, int port, String machine) throws DbException {
        Site where = new Site(url, host, port, machine, ProcessHandle.current().pid(), service);
        synchronized (this) {
            site = where;
            if (lineage != null) {
                for (Servable s : available.values()) {
                    record(s, where);
                }
            }
        }
    }

    private void record(Servable s, Site where) {
        String url = where.url() + "/versions/" + s.version;
        s.deployment = lineage.recordStart(s.model, settings.name(), url, where.host(), where.port(), where.machine(),
                where.pid(), where.service(), now());
        synchronized (s.info) {
            s.info.put("deployment", Map.of("id", s.deployment, "storage", lineage.shown, "url", url));
        }
    }

    private void recordStop(Servable s) {
        if (lineage != null && s.deployment >= 0) {
            try {
                lineage.recordStop(s.deployment, now());
            } catch (DbException e) {
                System.err.println(Main.SERVICE + ": cannot record the stop of version " + s.version + " in "
                        + lineage.shown + ": " + e.getMessage());
            }
        }
    }

    static String now() {
        return Instant.now().truncatedTo(ChronoUnit.MILLIS).toString();
    }

    /** Stop polling, then retire every version (each is closed once its requests have ended); bounded wait. */
    @Override
    public void close() {
        closing = true;
        if (poller != null) {
            poller.shutdownNow();
        }
        List<Servable> all;
        synchronized (this) {
            all = List.copyOf(available.values());
            available = Collections.emptyNavigableMap();
        }
        for (Servable s : all) {
            keep(s.version, State.of("UNLOADING"));
            s.retire();
        }
    }

    // ------------------------------------------------------------------ loading helpers

    /** One run of each image signature, so the first request does not pay for graph set-up. */
    static void warmUp(Model model) throws HttpError {
        Signature pixels = model.find("serving_default", MetaGraph.DT_UINT8, 4);
        if (pixels != null) {
            long[] shape = {1, 32, 32, 3};
            model.run(pixels, Map.of(pixels.inputs().keySet().iterator().next(), new Input(new byte[32 * 32 * 3], shape)));
        }
        Signature bytes = model.find("serving_bytes", MetaGraph.DT_STRING, 1);
        if (bytes != null) {
            model.run(bytes, Map.of(bytes.inputs().keySet().iterator().next(), new Input(new byte[][] {WARM_PNG}, new long[] {1})));
        }
    }

    /** What /v1/models/NAME/metadata adds to the signatures: labels, hashes, versions, lineage. */
    private Map<String, Object> describe(Model model, long version) {
        Map<String, Object> info = new LinkedHashMap<>();
        info.put("labels", model.labels);
        info.put("sha256", model.sha256);
        info.put("sha256_of", Model.GRAPH_FILE);
        info.put("model_path", model.savedModel.toString());
        info.put("service", service);
        info.put("tensorflow", model.tensorflowVersion);
        info.put("java", System.getProperty("java.version"));
        Map<String, Object> lin = new LinkedHashMap<>();
        if (model.exportDir != null) {
            Path parity = model.exportDir.resolve("parity.json");
            try {
                lin.put("export_parity", Lineage.jsonOrText(Model.readSmallFile(parity, 1 << 20)));
            } catch (IOException e) {
                lin.put("export_parity", "unreadable: " + e.getMessage());
            }
        }
        if (lineage != null) {
            lin.put("storage", lineage.shown);
            try {
                lin.put("records", lineage.describe(model.sha256));
            } catch (DbException e) {
                lin.put("records", List.of());
                lin.put("error", "cannot read lineage from " + lineage.shown + ": " + e.getMessage());
                System.err.println(Main.SERVICE + ": version " + version + ": " + lin.get("error"));
            }
        } else {
            lin.put("records", List.of());
            lin.put("note", "start with --storage URL (the study's database) to look the model up in autotl's lineage");
        }
        info.put("lineage", lin);
        return info;
    }

    // ------------------------------------------------------------------ metrics

    private String gauges() {
        StringBuilder sb = new StringBuilder(1024);
        String m = "model=\"" + Metrics.escape(settings.name()) + "\"";
        NavigableMap<Long, Servable> now = available;
        Metrics.header(sb, "autotl_serving_model_version", "gauge", "the newest available version (requests without one go there)");
        sb.append("autotl_serving_model_version{").append(m).append("} ").append(now.isEmpty() ? 0 : now.lastKey()).append('\n');
        Metrics.header(sb, "autotl_serving_model_version_state", "gauge", "1 for each version's current state");
        for (Map.Entry<Long, State> e : states.entrySet()) {
            sb.append("autotl_serving_model_version_state{").append(m).append(",version=\"").append(e.getKey())
                    .append("\",state=\"").append(e.getValue().state()).append("\"} 1\n");
        }
        Metrics.header(sb, "autotl_serving_model_load_seconds", "gauge", "seconds to load and warm up each available version");
        Metrics.header(sb, "autotl_serving_batch_queue_depth", "gauge", "requests waiting for a batch thread");
        int waiting = 0;
        StringBuilder load = new StringBuilder();
        for (Servable s : now.values()) {
            load.append("autotl_serving_model_load_seconds{").append(m).append(",version=\"").append(s.version).append("\"} ")
                    .append(Metrics.number(s.loadSeconds)).append('\n');
            waiting += s.batcher.waiting();
        }
        int at = sb.indexOf("# HELP autotl_serving_batch_queue_depth");
        sb.insert(at, load);
        sb.append("autotl_serving_batch_queue_depth{").append(m).append("} ").append(waiting).append('\n');
        return sb.toString();
    }
}
