package autotl.serving;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import autotl.serving.MetaGraph.Signature;
import autotl.serving.Model.Input;

/**
 * {@code serve MODEL_DIR [--port PORT] [--name NAME] [--storage URL] [--host HOST] ...}: load an
 * {@code autotl export} SavedModel once and serve it over HTTP until SIGTERM or SIGINT, which drain the
 * requests in flight, close the session, record the stop in the lineage and exit 0.
 */
public final class Main {
    static final String SERVICE = "autotl-serving-java";
    private static final String USAGE = """
            usage: serve MODEL_DIR [--port PORT] [--name NAME] [--storage URL] [--host HOST] [options]

              MODEL_DIR                 `autotl export` output folder, or its savedmodel/
              --port PORT               TCP port (default 8501, TF Serving's REST port; 0 picks a free one)
              --name NAME               model name in /v1/models/NAME (default: default)
              --host HOST               address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
              --storage URL             study database (sqlite:///... or postgresql://...): record this deployment
              --threads N               HTTP worker threads (default 16)
              --queue N                 requests waiting for a worker before 503 (default 256)
              --max-body-mb MB          largest request body, in MB (default 10); larger is 413
              --max-pixels N            largest image, in pixels, by its header (default 25000000); larger is 413
              --max-request-pixels N    pixels of all images of one request (default 100000000)
              --max-batch N             images in one request (default 64)
              --max-runs N              TensorFlow runs at once (default 4); others wait up to 30 s, then 503
              --drain-seconds S         on SIGTERM, wait this long for requests in flight (default 30)
              --intra-op-threads N      TensorFlow threads per operation (default 0: TensorFlow decides)
              --inter-op-threads N      TensorFlow operations at once (default 0: TensorFlow decides)

            A request's headers and body must arrive within 60 s (JAVA_OPTS=-Dsun.net.httpserver.maxReqTime=S).
            SIGTERM or SIGINT: stop accepting, finish the requests in flight, close the model, exit 0.
            """;

    /** A 2x2 PNG to warm the bytes signature up (the first run of a graph is slow). */
    private static final byte[] WARM_PNG = Base64.getDecoder().decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAE0lEQVR4nGP438AARAwMDf+BCAAp8gX9AiY2+QAAAABJRU5ErkJggg==");

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
        Path savedModel = Model.resolve(Path.of(o.modelDir));
        Lineage lineage = o.storage == null ? null : Lineage.open(o.storage);
        Model model = Model.load(savedModel, o.configProto(), o.maxRuns, 30);
        try {
            warmUp(model);
        } catch (HttpError | TfException e) {
            model.close();
            throw new IOException("the model fails on a tiny image: " + e.getMessage());
        }
        String service = SERVICE + " " + version();
        Map<String, Object> info = describe(model, service, lineage);
        Service http = new Service(model, new Service.Config(o.name, o.threads, o.queue, o.maxBodyMb << 20,
                new Rest.Limits(o.maxPixels, o.maxRequestPixels, o.maxBatch)), info);
        int port;
        try {
            port = http.start(o.host, o.port);
        } catch (IOException e) {
            model.close();
            throw new UsageException("cannot listen on " + o.host + ":" + o.port + ": " + e.getMessage());
        }
        String url = "http://" + (o.host.contains(":") ? "[" + o.host + "]" : o.host) + ":" + port + "/v1/models/" + o.name;
        long deployment = -1;
        if (lineage != null) {
            try {
                deployment = lineage.recordStart(model, o.name, url, o.host, port, machine(), ProcessHandle.current().pid(),
                        service, now());
            } catch (DbException e) {
                http.drain(0);
                model.close();
                throw new UsageException("cannot record the deployment in " + lineage.shown + ": " + e.getMessage());
            }
            synchronized (info) {
                info.put("deployment", Map.of("id", deployment, "storage", lineage.shown, "url", url));
            }
        }
        System.out.println(service + ": serving " + savedModel + " (sha256 " + model.sha256 + ") as \"" + o.name + "\" at "
                + url + " with TensorFlow " + model.tensorflowVersion + ", signatures " + model.signatures.keySet()
                + (lineage != null ? ", deployment " + deployment + " recorded in " + lineage.shown : ""));
        System.out.flush();

        // SIGTERM and SIGINT start the JVM's shutdown: this hook drains, closes, records the stop, and
        // halts with status 0 (a signal would otherwise make it 143 or 130); the server runs on meanwhile.
        long id = deployment;
        int drainSeconds = o.drainSeconds;
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.out.println(SERVICE + ": stopping: draining " + http.inFlight() + " request(s) in flight");
            boolean clean = shutDown(http, model, lineage, id, drainSeconds);
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

    private static boolean shutDown(Service http, Model model, Lineage lineage, long deployment, int seconds) {
        boolean clean = http.drain(seconds);
        try {
            model.close();
        } catch (TfException e) {
            System.err.println(SERVICE + ": " + e.getMessage());
        }
        if (lineage != null && deployment >= 0) {
            try {
                lineage.recordStop(deployment, now());
            } catch (DbException e) {
                System.err.println(SERVICE + ": cannot record the stop in " + lineage.shown + ": " + e.getMessage());
            }
        }
        return clean;
    }

    /** One run of each image signature, so the first request does not pay for graph set-up; a failure is fatal. */
    private static void warmUp(Model model) throws HttpError {
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
    private static Map<String, Object> describe(Model model, String service, Lineage lineage) throws UsageException {
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
                throw new UsageException("cannot read lineage from " + lineage.shown + ": " + e.getMessage());
            }
        } else {
            lin.put("records", List.of());
            lin.put("note", "start with --storage URL (the study's database) to look the model up in autotl's lineage");
        }
        info.put("lineage", lin);
        return info;
    }

    private static String now() {
        return Instant.now().truncatedTo(ChronoUnit.MILLIS).toString();
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
                    default -> throw new UsageException("unknown option " + a + "\n" + USAGE);
                }
            }
            if (positional.size() != 1) {
                throw new UsageException((positional.isEmpty() ? "MODEL_DIR is missing" : "one MODEL_DIR only, got " + positional)
                        + "\n" + USAGE);
            }
            o.modelDir = positional.get(0);
            if (!o.name.matches("[A-Za-z0-9][A-Za-z0-9._-]{0,127}")) {
                throw new UsageException("--name " + o.name + ": use letters, digits, '.', '_' and '-'");
            }
            o.maxRequestPixels = Math.max(o.maxRequestPixels, o.maxPixels);
            return o;
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
