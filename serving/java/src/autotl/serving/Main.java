package autotl.serving;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

/**
 * {@code serve MODEL_DIR|BASE_DIR [--port PORT] [--name NAME] [--storage URL] [--host HOST] ...}: serve an
 * {@code autotl export} SavedModel, or the versions of a base folder ({@link Manager}), over HTTP until
 * SIGTERM or SIGINT, which drain the requests in flight, close the sessions, record the stops in the
 * lineage and exit 0.
 */
public final class Main {
    static final String SERVICE = "autotl-serving-java";
    private static final String USAGE = """
            usage: serve MODEL_DIR|BASE_DIR [--port PORT] [--name NAME] [--storage URL] [--host HOST] [options]

              MODEL_DIR                 `autotl export` output folder, or its savedmodel/: served as version 1
              BASE_DIR                  a folder of version folders BASE_DIR/1/, BASE_DIR/2/, ... (`autotl export
                                        --version`), watched: new versions are loaded, warmed up and swapped in
              --port PORT               TCP port (default 8501, TF Serving's REST port; 0 picks a free one)
              --name NAME               model name in /v1/models/NAME (default: default)
              --host HOST               address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
              --storage URL             study database (sqlite:///... or postgresql://...): record this deployment
              --threads N               HTTP worker threads (default 16)
              --queue N                 requests waiting for a worker before 503 (default 256)
              --max-body-mb MB          largest request body, in MB (default 10); larger is 413
              --max-pixels N            largest image, in pixels, by its header (default 25000000); larger is 413
              --max-request-pixels N    pixels of all images of one request (default 100000000)
              --max-batch N             images in one request, and in one batched TensorFlow run (default 64)
              --enable-batching         gather concurrent requests into one TensorFlow run (as TF Serving's)
              --batch-timeout-micros N  with batching: wait at most this long for more requests (default 1000)
              --batch-threads N         with batching: batches run at once (default: the number of CPUs)
              --version-policy P        latest (default), latest:N, all, or specific:N[,N...]
              --label NAME=N            /v1/models/NAME/labels/NAME reaches version N (repeat for more labels)
              --poll-seconds S          look for new version folders every S seconds (default 1; 0: never)
              --max-runs N              TensorFlow runs at once (default 4); others wait up to 30 s, then 503
              --drain-seconds S         on SIGTERM, wait this long for requests in flight (default 30)
              --intra-op-threads N      TensorFlow threads per operation (default 0: TensorFlow decides)
              --inter-op-threads N      TensorFlow operations at once (default 0: TensorFlow decides)

            A request's headers and body must arrive within 60 s (JAVA_OPTS=-Dsun.net.httpserver.maxReqTime=S).
            Metrics for Prometheus: GET /monitoring/prometheus/metrics.
            SIGTERM or SIGINT: stop accepting, finish the requests in flight, close the model, exit 0.
            """;

    private Main() {}

    public static void main(String[] args) {
        System.setProperty("sun.net.httpserver.nodelay", "true"); // before the server classes load
        if (System.getProperty("sun.net.httpserver.maxReqTime") == null) {
            // a request's headers and body must arrive within 60 s: slow clients cannot hold the workers
            System.setProperty("sun.net.httpserver.maxReqTime", "60");
        }
        try {
            System.exit(run(args));
        } catch (UsageException e) {
            System.err.println("autotl-serving: error: " + e.getMessage());
            System.exit(2);
        } catch (TfException | DbException | IOException e) {
            System.err.println("autotl-serving: error: " + e.getMessage());
            System.exit(1);
        }
    }

    static String version() {
        String v = Main.class.getPackage().getImplementationVersion();
        return v == null ? "dev" : v;
    }

    private static int run(String[] args) throws UsageException, IOException {
        Options o = Options.parse(args);
        Manager.Settings settings = o.settings();
        Lineage lineage = o.storage == null ? null : Lineage.open(o.storage);
        String service = SERVICE + " " + version();
        Metrics metrics = new Metrics(o.name);
        Manager manager = new Manager(settings, metrics, lineage, service);
        manager.start();
        Service http = new Service(manager, metrics, new Service.Config(o.name, o.threads, o.queue, o.maxBodyMb << 20));
        int port;
        try {
            port = http.start(o.host, o.port);
        } catch (IOException e) {
            manager.close();
            throw new UsageException("cannot listen on " + o.host + ":" + o.port + ": " + e.getMessage());
        }
        String url = "http://" + (o.host.contains(":") ? "[" + o.host + "]" : o.host) + ":" + port + "/v1/models/" + o.name;
        try {
            manager.deployedAt(url, o.host, port, machine());
        } catch (DbException e) {
            http.drain(0);
            manager.close();
            throw new UsageException("cannot record the deployment in " + lineage.shown + ": " + e.getMessage());
        }
        Servable latest = manager.available().lastEntry().getValue();
        System.out.println(service + ": serving \"" + o.name + "\" at " + url + ": version(s) " + manager.available().keySet()
                + " of " + (settings.base() != null ? settings.base() + " (policy " + settings.policy()
                + (settings.pollSeconds() > 0 ? ", polled every " + settings.pollSeconds() + " s)" : ", not polled)")
                : latest.model.savedModel.toString()) + ", sha256 " + latest.model.sha256 + ", TensorFlow "
                + latest.model.tensorflowVersion + ", signatures " + latest.model.signatures.keySet() + ", batching "
                + (settings.batching().enabled() ? "on (up to " + o.maxBatch + " images, " + o.batchTimeoutMicros + " us, "
                + o.batchThreads + " threads)" : "off")
                + (lineage != null ? ", deployments recorded in " + lineage.shown : ""));
        System.out.flush();

        // SIGTERM and SIGINT start the JVM's shutdown: this hook drains, closes, records the stop, and
        // halts with status 0 (a signal would otherwise make it 143 or 130); the server runs on meanwhile.
        int drainSeconds = o.drainSeconds;
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println(SERVICE + ": stopping: draining " + http.inFlight() + " request(s) in flight");
            boolean clean = http.drain(drainSeconds);
            manager.close();
            System.out.println(SERVICE + ": stopped after " + http.served() + " request(s)"
                    + (clean ? "" : "; some were still running after " + drainSeconds + " s"));
            System.out.flush();
            System.err.flush();
            Runtime.getRuntime().halt(0);
        }, "shutdown"));
        try {
            new CountDownLatch(1).await(); // until the hook halts the JVM
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return 0;
    }

    private static String machine() {
        try {
            return Files.readString(Path.of("/proc/sys/kernel/hostname")).trim();
        } catch (IOException e) {
            String h = System.getenv("HOSTNAME");
            return h == null ? "unknown" : h;
        }
    }

    /** The command line. */
    private static final class Options {
        String modelDir;
        int port = 8501;
        String name = "default";
        String host = "127.0.0.1";
        String storage;
        int threads = 16;
        int queue = 256;
        long maxBodyMb = 10;
        long maxPixels = 25_000_000;
        long maxRequestPixels = 100_000_000;
        int maxBatch = 64;
        int maxRuns = 4;
        int drainSeconds = 30;
        int intraOp;
        int interOp;
        boolean batching;
        long batchTimeoutMicros = 1000;
        int batchThreads = Runtime.getRuntime().availableProcessors();
        VersionPolicy policy = VersionPolicy.LATEST;
        Map<String, Long> labels = new LinkedHashMap<>();
        int pollSeconds = 1;

        static Options parse(String[] args) throws UsageException {
            Options o = new Options();
            List<String> positional = new ArrayList<>();
            for (int i = 0; i < args.length; i++) {
                String a = args[i];
                if (a.equals("-h") || a.equals("--help")) {
                    System.out.print(USAGE);
                    System.exit(0);
                }
                if (!a.startsWith("--")) {
                    positional.add(a);
                    continue;
                }
                if (a.equals("--enable-batching") || a.startsWith("--enable-batching=")) {
                    o.batching = flag(a);
                    continue;
                }
                String value;
                int eq = a.indexOf('=');
                if (eq > 0) {
                    value = a.substring(eq + 1);
                    a = a.substring(0, eq);
                } else {
                    if (i + 1 >= args.length) {
                        throw new UsageException(a + " needs a value\n" + USAGE);
                    }
                    value = args[++i];
                }
                switch (a) {
                    case "--port" -> o.port = number(a, value, 0, 65535);
                    case "--name" -> o.name = value;
                    case "--host" -> o.host = value;
                    case "--storage" -> o.storage = value;
                    case "--threads" -> o.threads = number(a, value, 1, 1024);
                    case "--queue" -> o.queue = number(a, value, 1, 1 << 20);
                    case "--max-body-mb" -> o.maxBodyMb = number(a, value, 1, 1024);
                    case "--max-pixels" -> o.maxPixels = longNumber(a, value);
                    case "--max-request-pixels" -> o.maxRequestPixels = longNumber(a, value);
                    case "--max-batch" -> o.maxBatch = number(a, value, 1, 100_000);
                    case "--max-runs" -> o.maxRuns = number(a, value, 1, 1024);
                    case "--drain-seconds" -> o.drainSeconds = number(a, value, 0, 3600);
                    case "--intra-op-threads" -> o.intraOp = number(a, value, 0, 1024);
                    case "--inter-op-threads" -> o.interOp = number(a, value, 0, 1024);
                    case "--batch-timeout-micros" -> o.batchTimeoutMicros = number(a, value, 0, 10_000_000);
                    case "--batch-threads" -> o.batchThreads = number(a, value, 1, 1024);
                    case "--version-policy" -> o.policy = VersionPolicy.parse(value);
                    case "--label" -> o.label(value);
                    case "--poll-seconds" -> o.pollSeconds = number(a, value, 0, 86_400);
                    default -> throw new UsageException("unknown option " + a + "\n" + USAGE);
                }
            }
            if (positional.size() != 1) {
                throw new UsageException((positional.isEmpty() ? "MODEL_DIR (or BASE_DIR) is missing" : "one MODEL_DIR only, got " + positional)
                        + "\n" + USAGE);
            }
            o.modelDir = positional.get(0);
            if (!o.name.matches("[A-Za-z0-9][A-Za-z0-9._-]{0,127}")) {
                throw new UsageException("--name " + o.name + ": use letters, digits, '.', '_' and '-'");
            }
            o.maxRequestPixels = Math.max(o.maxRequestPixels, o.maxPixels);
            return o;
        }

        private static boolean flag(String arg) throws UsageException {
            int eq = arg.indexOf('=');
            String v = eq < 0 ? "true" : arg.substring(eq + 1);
            if (v.equals("true") || v.equals("false")) {
                return v.equals("true");
            }
            throw new UsageException(arg.substring(0, eq) + " takes true or false, got " + v);
        }

        private void label(String value) throws UsageException {
            int eq = value.indexOf('=');
            Long v = eq > 0 ? VersionPolicy.versionOf(value.substring(eq + 1)) : null;
            String label = eq > 0 ? value.substring(0, eq) : value;
            if (v == null || !label.matches("[A-Za-z][A-Za-z0-9._-]{0,63}")) {
                throw new UsageException("--label " + value + ": use NAME=VERSION, e.g. --label stable=3 (a name of letters, "
                        + "digits, '.', '_' and '-', a version of 1 or more)");
            }
            labels.put(label, v);
        }

        /** What the manager needs: the folder (one export, or a base folder of versions) and how to serve it. */
        Manager.Settings settings() throws UsageException {
            Path dir = Path.of(modelDir);
            if (!Files.isDirectory(dir)) {
                throw new UsageException("model folder " + dir + " does not exist");
            }
            Path single = null;
            Path base = null;
            if (Files.isRegularFile(dir.resolve(Model.GRAPH_FILE))
                    || Files.isRegularFile(dir.resolve("savedmodel").resolve(Model.GRAPH_FILE))) {
                single = dir.toAbsolutePath().normalize();
                if (policy != VersionPolicy.LATEST) {
                    throw new UsageException("--version-policy " + policy + " needs a BASE_DIR of version folders; "
                            + dir + " is one export (served as version 1)");
                }
            } else {
                base = dir.toAbsolutePath().normalize();
                try {
                    if (VersionPolicy.scan(base).isEmpty()) {
                        throw new UsageException(dir + " holds neither saved_model.pb, savedmodel/saved_model.pb nor version "
                                + "folders (1/, 2/, ...); pass the folder `autotl export` wrote, or a base folder of versions "
                                + "(`autotl export --version`)");
                    }
                } catch (IOException e) {
                    throw new UsageException("cannot read " + dir + ": " + e.getMessage());
                }
            }
            return new Manager.Settings(name, base, single, policy, Map.copyOf(labels), pollSeconds, configProto(), maxRuns,
                    new Rest.Limits(maxPixels, maxRequestPixels, maxBatch),
                    new Batcher.Config(maxBatch, batchTimeoutMicros, batching ? batchThreads : 0));
        }

        private static int number(String flag, String value, int min, int max) throws UsageException {
            try {
                int v = Integer.parseInt(value);
                if (v >= min && v <= max) {
                    return v;
                }
            } catch (NumberFormatException ignored) {
                // below
            }
            throw new UsageException(flag + " takes a whole number from " + min + " to " + max + ", got " + value);
        }

        private static long longNumber(String flag, String value) throws UsageException {
            try {
                long v = Long.parseLong(value.replace("_", ""));
                if (v > 0) {
                    return v;
                }
            } catch (NumberFormatException ignored) {
                // below
            }
            throw new UsageException(flag + " takes a positive whole number, got " + value);
        }

        /** A serialized ConfigProto with the thread counts (fields 2 and 5), or empty. */
        byte[] configProto() {
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            if (intraOp > 0) {
                out.write(2 << 3);
                varint(out, intraOp);
            }
            if (interOp > 0) {
                out.write(5 << 3);
                varint(out, interOp);
            }
            return out.toByteArray();
        }

        private static void varint(java.io.ByteArrayOutputStream out, int v) {
            while (v >= 0x80) {
                out.write((v & 0x7f) | 0x80);
                v >>>= 7;
            }
            out.write(v);
        }
    }
}
