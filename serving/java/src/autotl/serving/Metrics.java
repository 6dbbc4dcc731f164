package autotl.serving;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.DoubleAdder;
import java.util.concurrent.atomic.LongAdder;
import java.util.function.Supplier;

/**
 * The service's metrics in Prometheus' text format (version 0.0.4), served at
 * {@code GET /monitoring/prometheus/metrics} as TF Serving serves its own there. Counters and
 * histograms are lock-free adders; gauges are read when scraped.
 */
final class Metrics {
    static final String CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

    /** Seconds: 1 ms to 30 s. */
    static final double[] LATENCY_BUCKETS = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    /** Images in one TensorFlow run. */
    static final double[] BATCH_BUCKETS = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};

    /** A Prometheus histogram: cumulative buckets, sum and count. */
    static final class Histogram {
        final double[] bounds;
        final LongAdder[] counts;
        final DoubleAdder sum = new DoubleAdder();
        final LongAdder count = new LongAdder();

        Histogram(double[] bounds) {
            this.bounds = bounds;
            this.counts = new LongAdder[bounds.length];
            for (int i = 0; i < bounds.length; i++) {
                counts[i] = new LongAdder();
            }
        }

        void observe(double value) {
            for (int i = 0; i < bounds.length; i++) {
                if (value <= bounds[i]) {
                    counts[i].increment();
                    break;
                }
            }
            sum.add(value);
            count.increment();
        }

        void render(StringBuilder sb, String name, String labels) {
            long cumulative = 0;
            String sep = labels.isEmpty() ? "" : labels + ",";
            for (int i = 0; i < bounds.length; i++) {
                cumulative += counts[i].sum();
                sb.append(name).append("_bucket{").append(sep).append("le=\"").append(number(bounds[i])).append("\"} ")
                        .append(cumulative).append('\n');
            }
            String braces = labels.isEmpty() ? "" : "{" + labels + "}";
            sb.append(name).append("_bucket{").append(sep).append("le=\"+Inf\"} ").append(count.sum()).append('\n');
            sb.append(name).append("_sum").append(braces).append(' ').append(number(sum.sum())).append('\n');
            sb.append(name).append("_count").append(braces).append(' ').append(count.sum()).append('\n');
        }
    }

    private final String model;
    private final Map<String, LongAdder> requests = new ConcurrentHashMap<>();
    private final Map<String, Histogram> latency = new ConcurrentHashMap<>();
    private final Map<Long, LongAdder> byVersion = new ConcurrentHashMap<>();
    private final Histogram batchSizes = new Histogram(BATCH_BUCKETS);
    private final LongAdder loadsOk = new LongAdder();
    private final LongAdder loadsFailed = new LongAdder();
    private final LongAdder unloads = new LongAdder();
    private final List<Supplier<String>> gauges = new ArrayList<>();

    Metrics(String model) {
        this.model = model;
    }

    /** One answered request: its endpoint (predict, classify, status, metadata, healthz, metrics, other), status, seconds. */
    void request(String endpoint, int status, double seconds) {
        requests.computeIfAbsent(endpoint + "\u0000" + status, k -> new LongAdder()).increment();
        latency.computeIfAbsent(endpoint, k -> new Histogram(LATENCY_BUCKETS)).observe(seconds);
    }

    /** One prediction answered by {@code version}. */
    void servedBy(long version) {
        byVersion.computeIfAbsent(version, k -> new LongAdder()).increment();
    }

    /** One TensorFlow run of {@code images} images. */
    void batch(int images) {
        batchSizes.observe(images);
    }

    void loaded(boolean ok) {
        (ok ? loadsOk : loadsFailed).increment();
    }

    void unloaded() {
        unloads.increment();
    }

    /** A block of gauge lines computed at scrape time (HELP and TYPE included). */
    synchronized void gauge(Supplier<String> lines) {
        gauges.add(lines);
    }

    String render() {
        StringBuilder sb = new StringBuilder(8192);
        String m = "model=\"" + escape(model) + "\"";
        header(sb, "autotl_serving_requests_total", "counter", "HTTP requests answered, by endpoint and status code");
        requests.entrySet().stream().sorted(Map.Entry.comparingByKey()).forEach(e -> {
            String[] k = e.getKey().split("\u0000");
            sb.append("autotl_serving_requests_total{endpoint=\"").append(k[0]).append("\",status=\"").append(k[1])
                    .append("\"} ").append(e.getValue().sum()).append('\n');
        });
        header(sb, "autotl_serving_request_duration_seconds", "histogram",
                "time from the request's arrival at a worker to its answer, by endpoint");
        latency.entrySet().stream().sorted(Map.Entry.comparingByKey()).forEach(e ->
                e.getValue().render(sb, "autotl_serving_request_duration_seconds", "endpoint=\"" + e.getKey() + "\""));
        header(sb, "autotl_serving_predictions_total", "counter", "predict and classify requests answered, by model version");
        byVersion.entrySet().stream().sorted(Map.Entry.comparingByKey()).forEach(e ->
                sb.append("autotl_serving_predictions_total{").append(m).append(",version=\"").append(e.getKey())
                        .append("\"} ").append(e.getValue().sum()).append('\n'));
        header(sb, "autotl_serving_batch_size", "histogram", "images in one TensorFlow run");
        batchSizes.render(sb, "autotl_serving_batch_size", "");
        header(sb, "autotl_serving_model_loads_total", "counter", "version loads, by result (ok: loaded and warmed up)");
        sb.append("autotl_serving_model_loads_total{").append(m).append(",result=\"ok\"} ").append(loadsOk.sum()).append('\n');
        sb.append("autotl_serving_model_loads_total{").append(m).append(",result=\"failed\"} ").append(loadsFailed.sum())
                .append('\n');
        header(sb, "autotl_serving_model_unloads_total", "counter", "versions unloaded and closed");
        sb.append("autotl_serving_model_unloads_total{").append(m).append("} ").append(unloads.sum()).append('\n');
        List<Supplier<String>> copy;
        synchronized (this) {
            copy = List.copyOf(gauges);
        }
        for (Supplier<String> g : copy) {
            sb.append(g.get());
        }
        header(sb, "process_resident_memory_bytes", "gauge", "resident memory of the service's process");
        sb.append("process_resident_memory_bytes ").append(residentBytes()).append('\n');
        Runtime rt = Runtime.getRuntime();
        header(sb, "jvm_heap_committed_bytes", "gauge", "Java heap the JVM holds (part of the resident memory)");
        sb.append("jvm_heap_committed_bytes ").append(rt.totalMemory()).append('\n');
        header(sb, "jvm_heap_used_bytes", "gauge", "Java heap in use, garbage included until collected");
        sb.append("jvm_heap_used_bytes ").append(rt.totalMemory() - rt.freeMemory()).append('\n');
        return sb.toString();
    }

    static void header(StringBuilder sb, String name, String type, String help) {
        sb.append("# HELP ").append(name).append(' ').append(help).append('\n');
        sb.append("# TYPE ").append(name).append(' ').append(type).append('\n');
    }

    /** A sample value: integers without a fraction, others as Java prints doubles (Prometheus parses both). */
    static String number(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return Long.toString((long) v);
        }
        return String.format(Locale.ROOT, "%s", v);
    }

    /** A label value escaped as the text format wants (backslash, double quote, newline). */
    static String escape(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n");
    }

    /** Resident set size from /proc/self/statm (pages), or -1 where there is none. */
    static long residentBytes() {
        try {
            String[] f = Files.readString(Path.of("/proc/self/statm")).trim().split("\\s+");
            return Long.parseLong(f[1]) * 4096L;
        } catch (IOException | RuntimeException e) {
            return -1;
        }
    }
}
