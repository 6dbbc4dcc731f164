package autotl.serving;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReadWriteLock;
import java.util.concurrent.locks.ReentrantReadWriteLock;

import autotl.serving.MetaGraph.Signature;
import autotl.serving.MetaGraph.TensorInfo;

/**
 * An {@code autotl export} SavedModel loaded once into one TensorFlow session, shared by every thread.
 *
 * <p>At most {@code maxRuns} session runs go at once (each already uses TensorFlow's intra-op threads;
 * the bound keeps the memory of concurrent large batches in check); a run waits up to
 * {@code waitSeconds} for its turn, then the request is answered 503.
 */
final class Model implements AutoCloseable {
    /** The file whose SHA-256 autotl's lineage records for an exported SavedModel. */
    static final String GRAPH_FILE = "saved_model.pb";

    /** A tensor for the session: byte[] (uint8), float[] or byte[][] (string), with its shape. */
    record Input(Object values, long[] shape) {}

    /** An output tensor: its shape and values (float[], byte[][], ...). */
    record Output(long[] shape, Object values) {}

    final Path savedModel;
    final Path exportDir;
    final String sha256;
    final List<String> labels;
    final Map<String, Signature> signatures;
    final String tensorflowVersion;
    private final Map<String, Long> ops = new HashMap<>();
    private final Semaphore runs;
    private final int waitSeconds;
    private final ReadWriteLock lifecycle = new ReentrantReadWriteLock();
    private long handle;

    private Model(Path savedModel, long handle, Map<String, Signature> signatures, List<String> labels, String sha256,
                  int maxRuns, int waitSeconds) {
        this.savedModel = savedModel;
        Path parent = savedModel.getParent();
        this.exportDir = parent != null && Files.isRegularFile(parent.resolve("parity.json")) ? parent : null;
        this.handle = handle;
        this.signatures = signatures;
        this.labels = labels;
        this.sha256 = sha256;
        this.runs = new Semaphore(maxRuns, true);
        this.waitSeconds = waitSeconds;
        this.tensorflowVersion = Native.version();
    }

    /**
     * The SavedModel folder of {@code dir}: {@code dir} itself when it holds {@code saved_model.pb}, else
     * {@code dir/savedmodel} (an {@code autotl export} folder).
     */
    static Path resolve(Path dir) throws UsageException {
        if (Files.isRegularFile(dir.resolve(GRAPH_FILE))) {
            return dir.toAbsolutePath().normalize();
        }
        if (Files.isRegularFile(dir.resolve("savedmodel").resolve(GRAPH_FILE))) {
            return dir.resolve("savedmodel").toAbsolutePath().normalize();
        }
        if (!Files.isDirectory(dir)) {
            throw new UsageException("model folder " + dir + " does not exist");
        }
        throw new UsageException(dir + " holds neither saved_model.pb nor savedmodel/saved_model.pb; pass the folder "
                + "`autotl export` wrote, or its savedmodel/");
    }

    /** Load the SavedModel (tag "serve") with an optional serialized ConfigProto. */
    static Model load(Path savedModel, byte[] config, int maxRuns, int waitSeconds) throws IOException {
        byte[][] meta = new byte[1][];
        long handle = Native.load(utf8(savedModel.toString()), new byte[][] {utf8("serve")}, config, meta);
        Model model = null;
        try {
            Map<String, Signature> all = MetaGraph.signatures(meta[0]);
            Map<String, Signature> usable = new LinkedHashMap<>();
            model = new Model(savedModel, handle, usable, labels(savedModel), sha256(savedModel.resolve(GRAPH_FILE)),
                    maxRuns, waitSeconds);
            for (Signature s : all.values()) {
                if (s.name().startsWith("__") || s.outputs().isEmpty()) {
                    continue; // __saved_model_init_op and the like
                }
                if (model.resolveOps(s)) {
                    usable.put(s.name(), s);
                } else {
                    System.err.println("autotl-serving: skipping signature " + s.name() + ": a tensor is not in the graph");
                }
            }
            if (usable.isEmpty()) {
                throw new IOException(savedModel + " has no servable signature");
            }
            return model;
        } catch (IOException | RuntimeException e) {
            Native.close(handle);
            throw e;
        }
    }

    private boolean resolveOps(Signature s) {
        List<TensorInfo> all = new ArrayList<>(s.inputs().values());
        all.addAll(s.outputs().values());
        for (TensorInfo t : all) {
            if (t.tensor().isEmpty()) {
                return false; // sparse or composite tensors: not served
            }
            long op = Native.operation(handle, utf8(t.op()));
            if (op == 0) {
                return false;
            }
            ops.put(t.op(), op);
        }
        return true;
    }

    /** Run {@code signature} on {@code inputs} (by input key); returns every output by key. */
    Map<String, Output> run(Signature signature, Map<String, Input> inputs) throws HttpError {
        List<TensorInfo> ins = new ArrayList<>(signature.inputs().values());
        List<TensorInfo> outs = new ArrayList<>(signature.outputs().values());
        long[] inOps = new long[ins.size()];
        int[] inIndex = new int[ins.size()];
        Object[] inValues = new Object[ins.size()];
        long[][] inShapes = new long[ins.size()][];
        for (int i = 0; i < ins.size(); i++) {
            TensorInfo t = ins.get(i);
            Input in = inputs.get(t.key());
            inOps[i] = ops.get(t.op());
            inIndex[i] = t.index();
            inValues[i] = in.values();
            inShapes[i] = in.shape();
        }
        long[] outOps = new long[outs.size()];
        int[] outIndex = new int[outs.size()];
        for (int i = 0; i < outs.size(); i++) {
            outOps[i] = ops.get(outs.get(i).op());
            outIndex[i] = outs.get(i).index();
        }
        Object[] raw;
        acquire();
        try {
            lifecycle.readLock().lock();
            try {
                if (handle == 0) {
                    throw new HttpError(503, "the model is closed: the service is shutting down", true, false);
                }
                raw = Native.run(handle, inOps, inIndex, inValues, inShapes, outOps, outIndex);
            } finally {
                lifecycle.readLock().unlock();
            }
        } finally {
            runs.release();
        }
        Map<String, Output> result = new LinkedHashMap<>();
        for (int i = 0; i < outs.size(); i++) {
            result.put(outs.get(i).key(), new Output((long[]) raw[2 * i], raw[2 * i + 1]));
        }
        return result;
    }

    private void acquire() throws HttpError {
        try {
            if (!runs.tryAcquire(waitSeconds, TimeUnit.SECONDS)) {
                throw new HttpError(503, "busy: no inference slot became free within " + waitSeconds + " s; retry later",
                        false, false);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new HttpError(503, "interrupted while waiting for an inference slot", true, false);
        }
    }

    /** Close the session once every running call has returned. */
    @Override
    public void close() {
        lifecycle.writeLock().lock();
        try {
            if (handle != 0) {
                long h = handle;
                handle = 0;
                Native.close(h);
            }
        } finally {
            lifecycle.writeLock().unlock();
        }
    }

    /** The signature with one input of {@code dtype} and rank {@code rank}, preferring {@code preferred}. */
    Signature find(String preferred, int dtype, int rank) {
        Signature p = signatures.get(preferred);
        if (p != null && single(p, dtype, rank)) {
            return p;
        }
        for (Signature s : signatures.values()) {
            if (single(s, dtype, rank)) {
                return s;
            }
        }
        return null;
    }

    private static boolean single(Signature s, int dtype, int rank) {
        if (s.inputs().size() != 1) {
            return false;
        }
        TensorInfo t = s.inputs().values().iterator().next();
        return t.dtype() == dtype && t.shape() != null && t.shape().length == rank;
    }

    // ------------------------------------------------------------------ files

    /** The class names: savedmodel/assets/labels.txt (autotl exports it), else labels.txt beside the folder. */
    private static List<String> labels(Path savedModel) throws IOException {
        for (Path p : new Path[] {savedModel.resolve("assets").resolve("labels.txt"),
                savedModel.getParent() == null ? null : savedModel.getParent().resolve("labels.txt")}) {
            if (p != null && Files.isRegularFile(p)) {
                List<String> out = new ArrayList<>();
                for (String line : Files.readAllLines(p, StandardCharsets.UTF_8)) {
                    if (!line.isEmpty()) {
                        out.add(line);
                    }
                }
                return Collections.unmodifiableList(out);
            }
        }
        return List.of();
    }

    static String sha256(Path file) throws IOException {
        try (InputStream in = Files.newInputStream(file)) {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) {
                md.update(buf, 0, n);
            }
            return HexFormat.of().formatHex(md.digest());
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    static String readSmallFile(Path file, int limit) throws IOException {
        try (InputStream in = Files.newInputStream(file)) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buf = new byte[8192];
            for (int n; (n = in.read(buf)) > 0 && out.size() <= limit; ) {
                out.write(buf, 0, n);
            }
            if (out.size() > limit) {
                throw new IOException(file + " is larger than " + limit + " bytes");
            }
            return out.toString(StandardCharsets.UTF_8);
        }
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
