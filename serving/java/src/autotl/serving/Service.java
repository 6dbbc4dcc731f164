package autotl.serving;

import com.sun.net.httpserver.Headers;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NavigableMap;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.Executor;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import autotl.serving.MetaGraph.Signature;
import autotl.serving.MetaGraph.TensorInfo;
import autotl.serving.Model.Input;
import autotl.serving.Model.Output;

/**
 * The HTTP side: {@code com.sun.net.httpserver} on a bounded pool of worker threads.
 *
 * <ul>
 *   <li>{@code POST /v1/models/NAME[/versions/N | /labels/LABEL]:predict}: TensorFlow Serving's REST predict
 *       ({@link Rest}) on the newest version, or the one named ({@link Manager}), batched ({@link Batcher});
 *   <li>{@code POST /v1/classify}: raw JPEG/PNG/GIF/BMP bytes to {"label", "probability", "probabilities"};
 *   <li>{@code GET /healthz}, {@code GET /v1/models/NAME[/versions/N]} (TF Serving's status of each version),
 *       {@code GET /v1/models/NAME[/versions/N]/metadata} (signatures, labels, SHA-256, lineage);
 *   <li>{@code GET /monitoring/prometheus/metrics} ({@link Metrics}).
 * </ul>
 *
 * <p>Every answer is JSON; every error is {"error": "..."} with a 4xx or 5xx status, whatever the body.
 * A body is read up to {@code maxBody} bytes and no further: a longer one is answered 413, then the rest is
 * read and thrown away (bounded in bytes and time) so the client can read the answer. When the queue of
 * waiting requests is full, requests are answered 503 by one spare thread. {@link #drain} stops accepting,
 * answers requests that arrive on open connections 503, and waits for the ones in flight.
 */
final class Service {
    /** Bytes and seconds spent discarding the rest of a body over the limit, before dropping the connection. */
    private static final long DRAIN_BYTES = 1L << 30;
    private static final long DRAIN_NANOS = TimeUnit.SECONDS.toNanos(60);
    private static final int MAX_JSON_DEPTH = 32;

    /** Settings from the command line. */
    record Config(String name, int threads, int queue, long maxBody) {}

    private static final String MODELS = "/v1/models/";
    static final String METRICS_PATH = "/monitoring/prometheus/metrics";

    private final Manager manager;
    private final Metrics metrics;
    private final Config config;
    private final long startedNanos = System.nanoTime();
    private final AtomicInteger inFlight = new AtomicInteger();
    private final AtomicLong served = new AtomicLong();
    private volatile boolean draining;
    private HttpServer server;
    private ThreadPoolExecutor workers;
    private ThreadPoolExecutor overflow;

    /** Set on the thread that runs an exchange: answer 503 at once (overloaded, or arrived while draining). */
    private static final ThreadLocal<String> REFUSE = new ThreadLocal<>();

    Service(Manager manager, Metrics metrics, Config config) {
        this.manager = manager;
        this.metrics = metrics;
        this.config = config;
        metrics.gauge(this::gauges);
    }

    private String gauges() {
        StringBuilder sb = new StringBuilder(256);
        Metrics.header(sb, "autotl_serving_in_flight_requests", "gauge", "HTTP requests being read, run or answered");
        sb.append("autotl_serving_in_flight_requests ").append(inFlight.get()).append('\n');
        Metrics.header(sb, "autotl_serving_http_queue_depth", "gauge", "HTTP requests waiting for a worker thread");
        ThreadPoolExecutor w = workers;
        sb.append("autotl_serving_http_queue_depth ").append(w == null ? 0 : w.getQueue().size()).append('\n');
        return sb.toString();
    }

    /** Bind and start; returns the port (useful with port 0). */
    int start(String host, int port) throws IOException {
        workers = new ThreadPoolExecutor(config.threads(), config.threads(), 60, TimeUnit.SECONDS,
                new ArrayBlockingQueue<>(config.queue()), threads("http-worker"), (r, pool) -> refuseOverflow(r));
        overflow = new ThreadPoolExecutor(1, 1, 60, TimeUnit.SECONDS, new ArrayBlockingQueue<>(256), threads("http-overloaded"),
                new ThreadPoolExecutor.AbortPolicy());
        server = HttpServer.create(new InetSocketAddress(host, port), 1024);
        server.setExecutor(this::execute);
        server.createContext("/", this::handle);
        server.start();
        return server.getAddress().getPort();
    }

    private static ThreadFactory threads(String prefix) {
        AtomicInteger n = new AtomicInteger();
        return r -> {
            Thread t = new Thread(null, r, prefix + "-" + n.incrementAndGet(), 8L << 20); // TensorFlow may run kernels here
            t.setDaemon(true);
            return t;
        };
    }

    /** The server's executor: counts exchanges in flight and marks the ones that arrive while draining. */
    private void execute(Runnable exchange) {
        boolean late = draining;
        inFlight.incrementAndGet();
        Runnable counted = () -> {
            if (late) {
                REFUSE.set("shutting down");
            }
            try {
                exchange.run();
            } finally {
                REFUSE.remove();
                inFlight.decrementAndGet();
            }
        };
        try {
            workers.execute(counted);
        } catch (RejectedExecutionException e) { // the overflow thread is full too: the server closes the connection
            inFlight.decrementAndGet();
            throw e;
        }
    }

    private void refuseOverflow(Runnable counted) {
        overflow.execute(() -> {
            REFUSE.set("overloaded: " + config.queue() + " requests already waiting; retry later");
            counted.run();
        });
    }

    /**
     * Stop accepting connections, refuse new requests on open ones, and wait up to {@code seconds} for
     * the requests in flight; true when they all finished.
     */
    boolean drain(int seconds) {
        draining = true;
        Thread stopper = new Thread(() -> server.stop(seconds), "http-stop"); // closes the listening socket first
        stopper.setDaemon(true);
        stopper.start();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (inFlight.get() > 0 && System.nanoTime() < deadline) {
            sleep(10);
        }
        boolean done = inFlight.get() == 0;
        workers.shutdown();
        overflow.shutdown();
        try {
            workers.awaitTermination(1, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        return done;
    }

    int inFlight() {
        return inFlight.get();
    }

    long served() {
        return served.get();
    }

    private static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ------------------------------------------------------------------ routing

    private void handle(HttpExchange ex) {
        long t0 = System.nanoTime();
        try {
            String refuse = REFUSE.get();
            if (refuse != null) {
                throw new HttpError(503, refuse, true, true);
            }
            route(ex);
        } catch (HttpError e) {
            fail(ex, e);
        } catch (TfException e) {
            int status = e.httpStatus();
            if (status >= 500) {
                System.err.println("autotl-serving: " + e.getMessage());
            }
            String msg = e.getMessage();
            int nl = msg.indexOf('\n');
            fail(ex, new HttpError(status, nl > 0 ? msg.substring(0, nl) : msg, false, true)); // the rest names graph nodes
        } catch (IOException e) {
            fail(ex, new HttpError(400, "could not read the request: " + e.getMessage(), true, false)); // the client went away, or was too slow
        } catch (OutOfMemoryError e) {
            fail(ex, new HttpError(503, "out of memory for this request; send fewer or smaller images", true, true));
        } catch (Throwable e) {
            System.err.println("autotl-serving: internal error: " + e);
            e.printStackTrace();
            fail(ex, new HttpError(500, "internal error: " + e.getClass().getSimpleName()
                    + (e.getMessage() == null ? "" : ": " + e.getMessage()), true, true));
        } finally {
            served.incrementAndGet();
            ex.close();
            metrics.request(endpoint(ex.getRequestURI().getRawPath()), ex.getResponseCode(), (System.nanoTime() - t0) / 1e9);
        }
    }

    /** The endpoint label of a path, for the metrics (a small fixed set, whatever clients send). */
    static String endpoint(String path) {
        if (path.equals("/healthz")) {
            return "healthz";
        }
        if (path.equals("/v1/classify")) {
            return "classify";
        }
        if (path.equals(METRICS_PATH)) {
            return "metrics";
        }
        if (!path.startsWith(MODELS)) {
            return "other";
        }
        int colon = path.lastIndexOf(':');
        if (colon >= 0) {
            return path.substring(colon + 1).equals("predict") ? "predict" : "other";
        }
        return path.endsWith("/metadata") ? "metadata" : "status";
    }

    private void route(HttpExchange ex) throws Exception {
        String method = ex.getRequestMethod();
        String path = ex.getRequestURI().getRawPath();
        if (path.equals("/healthz")) {
            allow(method, "GET");
            health(ex);
        } else if (path.equals("/v1/classify")) {
            allow(method, "POST");
            classify(ex);
        } else if (path.equals(METRICS_PATH)) {
            allow(method, "GET");
            sendText(ex, metrics.render());
        } else if (path.startsWith(MODELS)) {
            model(ex, method, path);
        } else {
            throw new HttpError(404, "no such resource " + Json.clip(path) + "; see GET /v1/models/" + config.name()
                    + "/metadata, POST /v1/models/" + config.name() + ":predict, POST /v1/classify, GET /healthz, GET "
                    + METRICS_PATH);
        }
    }

    /** {@code /v1/models/NAME[/versions/N | /labels/LABEL][/metadata | :predict]}, as TF Serving's REST API. */
    private void model(HttpExchange ex, String method, String path) throws Exception {
        String rest = path.substring(MODELS.length());
        int colon = rest.lastIndexOf(':');
        String verb = colon >= 0 ? rest.substring(colon + 1) : null;
        String[] parts = (colon >= 0 ? rest.substring(0, colon) : rest).split("/", -1);
        if (!parts[0].equals(config.name())) {
            throw new HttpError(404, "no model \"" + Json.clip(parts[0]) + "\"; this service serves \"" + config.name() + "\"");
        }
        Long version = null;
        String label = null;
        int next = 1;
        if (parts.length >= 3 && parts[1].equals("versions")) {
            version = VersionPolicy.versionOf(parts[2]);
            if (version == null) {
                throw new HttpError(404, "no version \"" + Json.clip(parts[2]) + "\": versions are whole numbers 1 or more");
            }
            next = 3;
        } else if (parts.length >= 3 && parts[1].equals("labels")) {
            label = parts[2];
            next = 3;
        }
        String tail = String.join("/", java.util.Arrays.copyOfRange(parts, next, parts.length));
        if (verb != null && tail.isEmpty()) {
            if (!verb.equals("predict")) {
                throw new HttpError(404, "unsupported method :" + Json.clip(verb) + "; this service answers :predict");
            }
            allow(method, "POST");
            predict(ex, version, label);
        } else if (verb == null && tail.isEmpty()) {
            allow(method, "GET");
            if (label != null) {
                version = labelled(label);
            }
            send(ex, 200, Json.write(manager.status(version, draining)));
        } else if (verb == null && tail.equals("metadata")) {
            allow(method, "GET");
            send(ex, 200, Json.write(metadata(version, label)));
        } else {
            throw new HttpError(404, "no such resource " + Json.clip(path));
        }
    }

    private Long labelled(String label) throws HttpError {
        Long v = manager.labels().get(label);
        if (v == null) {
            throw new HttpError(404, "no label \"" + Json.clip(label) + "\" for model \"" + config.name() + "\"");
        }
        return v;
    }

    private static void allow(String method, String allowed) throws HttpError {
        if (!method.equals(allowed)) {
            throw new HttpError(405, "method " + Json.clip(method) + " not allowed here; use " + allowed, false, true);
        }
    }

    // ------------------------------------------------------------------ endpoints

    private void health(HttpExchange ex) throws IOException {
        NavigableMap<Long, Servable> now = manager.available();
        boolean ok = !draining && !now.isEmpty();
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("status", draining ? "draining" : now.isEmpty() ? "no version available" : "ok");
        out.put("model", config.name());
        out.put("version", now.isEmpty() ? null : Long.toString(now.lastKey()));
        out.put("versions", now.keySet().stream().map(String::valueOf).toList());
        out.put("sha256", now.isEmpty() ? null : now.lastEntry().getValue().model.sha256);
        out.put("in_flight", inFlight.get());
        out.put("served", served.get());
        out.put("uptime_seconds", (System.nanoTime() - startedNanos) / 1e9);
        send(ex, ok ? 200 : 503, Json.write(out));
    }

    private Map<String, Object> metadata(Long version, String label) throws HttpError {
        Servable s = manager.lease(version, label);
        try {
            Map<String, Object> sigs = new LinkedHashMap<>();
            for (Signature sig : s.model.signatures.values()) {
                Map<String, Object> one = new LinkedHashMap<>();
                one.put("inputs", tensors(sig.inputs()));
                one.put("outputs", tensors(sig.outputs()));
                one.put("method_name", sig.method());
                sigs.put(sig.name(), one);
            }
            Map<String, Object> spec = new LinkedHashMap<>();
            spec.put("name", config.name());
            spec.put("signature_name", "");
            spec.put("version", Long.toString(s.version));
            Map<String, Object> out = new LinkedHashMap<>();
            out.put("model_spec", spec);
            out.put("metadata", Map.of("signature_def", Map.of("signature_def", sigs)));
            synchronized (s.info) {
                out.putAll(s.info);
            }
            return out;
        } finally {
            s.release();
        }
    }

    private static Map<String, Object> tensors(Map<String, TensorInfo> infos) {
        Map<String, Object> out = new LinkedHashMap<>();
        for (TensorInfo t : infos.values()) {
            Map<String, Object> one = new LinkedHashMap<>();
            one.put("dtype", t.dtypeName());
            Map<String, Object> shape = new LinkedHashMap<>();
            if (t.shape() == null) {
                shape.put("unknown_rank", true);
            } else {
                List<Object> dims = new ArrayList<>();
                for (long d : t.shape()) {
                    dims.add(Map.of("size", Long.toString(d), "name", ""));
                }
                shape.put("dim", dims);
                shape.put("unknown_rank", false);
            }
            one.put("tensor_shape", shape);
            one.put("name", t.tensor());
            out.put(t.key(), one);
        }
        return out;
    }

    private void predict(HttpExchange ex, Long version, String label) throws Exception {
        byte[] body = readBody(ex);
        Object json = Json.parse(body, body.length, MAX_JSON_DEPTH);
        body = null; // let the bytes go before TensorFlow runs
        Servable s = manager.lease(version, label);
        try {
            Rest.Prepared p = s.rest.prepare(json);
            json = null;
            Map<String, Output> out = s.batcher.run(p.signature(), p.inputs(), p.batch());
            metrics.servedBy(s.version);
            ex.getResponseHeaders().set("X-Model-Version", Long.toString(s.version));
            send(ex, 200, Rest.answer(p, out));
        } finally {
            s.release();
        }
    }

    private void classify(HttpExchange ex) throws Exception {
        byte[] body = readBody(ex);
        if (body.length == 0) {
            throw HttpError.bad("empty body: POST the bytes of one JPEG or PNG image");
        }
        Servable s = manager.lease(null, null);
        try {
            classify(ex, s, body);
        } finally {
            s.release();
        }
    }

    private void classify(HttpExchange ex, Servable s, byte[] body) throws Exception {
        Model model = s.model;
        Signature sig = model.find("serving_bytes", MetaGraph.DT_STRING, 1);
        if (sig == null) {
            throw new HttpError(400, "this model has no signature taking encoded images (like serving_bytes); use :predict");
        }
        ImageHeader h = s.rest.checkImage(body, "body");
        s.rest.checkRequestPixels(h.pixels());
        String key = sig.inputs().keySet().iterator().next();
        Map<String, Output> out = s.batcher.run(sig, Map.of(key, new Input(new byte[][] {body}, new long[] {1})), 1);
        metrics.servedBy(s.version);
        ex.getResponseHeaders().set("X-Model-Version", Long.toString(s.version));
        Output probs = out.get("probabilities");
        if (probs == null || !(probs.values() instanceof float[])) {
            probs = out.values().stream().filter(o -> o.values() instanceof float[]).findFirst()
                    .orElseThrow(() -> new IllegalStateException("signature " + sig.name() + " has no float output"));
        }
        float[] p = (float[]) probs.values();
        int best = 0;
        for (int i = 1; i < p.length; i++) {
            if (p[i] > p[best]) {
                best = i;
            }
        }
        List<String> labels = model.labels.size() == p.length ? model.labels : null;
        StringBuilder sb = new StringBuilder(128);
        sb.append("{\"label\": ");
        Json.quote(sb, labels != null ? labels.get(best) : Integer.toString(best));
        sb.append(", \"probability\": ");
        Json.number(sb, p[best]);
        sb.append(", \"probabilities\": {");
        for (int i = 0; i < p.length; i++) {
            sb.append(i > 0 ? ", " : "");
            Json.quote(sb, labels != null ? labels.get(i) : Integer.toString(i));
            sb.append(": ");
            Json.number(sb, p[i]);
        }
        sb.append("}, \"model_version\": \"").append(s.version).append('"');
        send(ex, 200, sb.append('}').toString());
    }

    // ------------------------------------------------------------------ bodies and answers

    /** The request body, at most {@code maxBody} bytes; a longer one is a 413 (its rest is drained after the answer). */
    private byte[] readBody(HttpExchange ex) throws IOException, HttpError {
        long limit = config.maxBody();
        String declared = ex.getRequestHeaders().getFirst("Content-Length");
        if (declared != null) {
            long n;
            try {
                n = Long.parseLong(declared.trim());
            } catch (NumberFormatException e) {
                throw new HttpError(400, "bad Content-Length", true, false);
            }
            if (n > limit) {
                throw tooLarge(n);
            }
        }
        InputStream in = ex.getRequestBody();
        byte[] buf = new byte[(int) Math.min(limit + 1, declared != null ? Long.parseLong(declared.trim()) + 1 : 1 << 16)];
        int len = 0;
        while (true) {
            if (len == buf.length) {
                if (len > limit) {
                    throw tooLarge(-1);
                }
                buf = Arrays.copyOf(buf, (int) Math.min(limit + 1, (long) buf.length * 2));
            }
            int n = in.read(buf, len, buf.length - len);
            if (n < 0) {
                break;
            }
            len += n;
            if (len > limit) {
                throw tooLarge(-1);
            }
        }
        return len == buf.length ? buf : Arrays.copyOf(buf, len);
    }

    private HttpError tooLarge(long declared) {
        String size = declared >= 0 ? declared + " bytes" : "more than " + config.maxBody() + " bytes";
        return new HttpError(413, "request body of " + size + " is over the limit of " + config.maxBody()
                + " bytes (--max-body-mb)", false, true);
    }

    private static void sendText(HttpExchange ex, String text) throws IOException {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", Metrics.CONTENT_TYPE);
        ex.sendResponseHeaders(200, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }

    private static void send(HttpExchange ex, int status, String json) throws IOException {
        byte[] bytes = json.getBytes(StandardCharsets.UTF_8);
        Headers h = ex.getResponseHeaders();
        h.set("Content-Type", "application/json");
        ex.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(bytes);
        }
    }

    /** Answer {"error": ...}; then, if the body was not read to its end, discard the rest (bounded). */
    private void fail(HttpExchange ex, HttpError e) {
        try {
            if (ex.getResponseCode() != -1) {
                return; // an answer is already on its way: nothing else can be said
            }
            byte[] bytes = Json.write(Map.of("error", e.getMessage())).getBytes(StandardCharsets.UTF_8);
            Headers h = ex.getResponseHeaders();
            h.set("Content-Type", "application/json");
            if (e.close) {
                h.set("Connection", "close");
            }
            if (e.status == 405) {
                h.set("Allow", e.getMessage().substring(e.getMessage().lastIndexOf(' ') + 1));
            }
            ex.sendResponseHeaders(e.status, bytes.length);
            OutputStream out = ex.getResponseBody();
            out.write(bytes);
            out.flush();
            if (e.drain) {
                discardBody(ex);
            }
        } catch (IOException ignored) {
            // the client went away
        }
    }

    private static void discardBody(HttpExchange ex) throws IOException {
        InputStream in = ex.getRequestBody();
        byte[] sink = new byte[1 << 16];
        long total = 0;
        long deadline = System.nanoTime() + DRAIN_NANOS;
        for (int n; total < DRAIN_BYTES && System.nanoTime() < deadline && (n = in.read(sink)) >= 0; ) {
            total += n;
        }
    }
}
