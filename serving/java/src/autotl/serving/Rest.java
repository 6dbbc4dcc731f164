package autotl.serving;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import autotl.serving.Json.NumArray;
import autotl.serving.MetaGraph.Signature;
import autotl.serving.MetaGraph.TensorInfo;
import autotl.serving.Model.Input;
import autotl.serving.Model.Output;

/**
 * TensorFlow Serving's REST predict API over a {@link Model}: the row format
 * ({@code {"signature_name": ..., "instances": [...]}} answered with {@code {"predictions": [...]}}) and
 * the columnar format ({@code "inputs"} answered with {@code "outputs"}); binary values as
 * {@code {"b64": "..."}}. One difference: without {@code signature_name}, a request whose values are
 * {@code {"b64": ...}} (or name another signature's input) goes to the signature that takes them,
 * where TF Serving would always pick {@code serving_default}.
 */
final class Rest {
    private static final Set<String> REQUEST_KEYS = Set.of("signature_name", "instances", "inputs");

    /** Limits on what a request may make TensorFlow decode or hold. */
    record Limits(long maxPixels, long maxRequestPixels, int maxBatch) {}

    /** A request turned into tensors. */
    record Prepared(Signature signature, Map<String, Input> inputs, boolean rows, int batch) {}

    private final Model model;
    private final Limits limits;

    Rest(Model model, Limits limits) {
        this.model = model;
        this.limits = limits;
    }

    /** Parse a predict request's JSON into the signature and its input tensors. */
    Prepared prepare(Object json) throws HttpError {
        if (!(json instanceof Map<?, ?> raw)) {
            throw HttpError.bad("the request must be a JSON object with \"instances\" or \"inputs\"");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> req = (Map<String, Object>) raw;
        for (String key : req.keySet()) {
            if (!REQUEST_KEYS.contains(key)) {
                throw HttpError.bad("unknown request field \"" + Json.clip(key) + "\"; expected signature_name and "
                        + "either instances (row format) or inputs (columnar format)");
            }
        }
        Object instances = req.get("instances");
        Object inputs = req.get("inputs");
        if ((instances == null) == (inputs == null)) {
            throw HttpError.bad("the request needs exactly one of \"instances\" (row format) or \"inputs\" (columnar format)");
        }
        Signature sig = signature(req.get("signature_name"), instances != null ? instances : inputs, instances != null);
        return instances != null ? rows(sig, instances) : columns(sig, inputs);
    }

    private Signature signature(Object name, Object values, boolean rows) throws HttpError {
        if (name != null) {
            if (!(name instanceof String s)) {
                throw HttpError.bad("signature_name must be a string");
            }
            Signature sig = model.signatures.get(s);
            if (sig == null) {
                throw HttpError.bad("no signature \"" + Json.clip(s) + "\" in this model; it has " + model.signatures.keySet());
            }
            return sig;
        }
        Signature dflt = model.signatures.get("serving_default");
        Object probe = values;
        if (rows) {
            probe = values instanceof List<?> list && !list.isEmpty() ? list.get(0) : null;
        }
        if (probe instanceof Map<?, ?> m && !m.isEmpty()) {
            if (isBinary(m)) {
                Signature bytes = model.find("serving_bytes", MetaGraph.DT_STRING, 1);
                if (bytes != null && (dflt == null || !takesStrings(dflt))) {
                    return bytes;
                }
            } else if (dflt == null || !dflt.inputs().keySet().equals(m.keySet())) {
                for (Signature s : model.signatures.values()) {
                    if (s.inputs().keySet().equals(m.keySet())) {
                        return s;
                    }
                }
            }
        }
        if (rows && probe instanceof String) {
            Signature bytes = model.find("serving_bytes", MetaGraph.DT_STRING, 1);
            if (bytes != null && (dflt == null || !takesStrings(dflt))) {
                return bytes;
            }
        }
        if (dflt == null) {
            throw HttpError.bad("no signature_name given and this model has no serving_default; it has "
                    + model.signatures.keySet());
        }
        return dflt;
    }

    private static boolean takesStrings(Signature s) {
        return s.inputs().values().stream().allMatch(t -> t.dtype() == MetaGraph.DT_STRING);
    }

    private static boolean isBinary(Map<?, ?> m) {
        return m.size() == 1 && m.containsKey("b64");
    }

    // ------------------------------------------------------------------ row format

    private Prepared rows(Signature sig, Object instances) throws HttpError {
        if (instances instanceof NumArray a && a.shape.length >= 2 && sig.inputs().size() == 1) {
            // every instance an array of numbers of one shape: already the batch tensor
            TensorInfo t = sig.inputs().values().iterator().next();
            if (t.dtype() != MetaGraph.DT_STRING) {
                if (a.shape[0] > limits.maxBatch()) {
                    throw HttpError.bad(a.shape[0] + " instances in one request; the limit is " + limits.maxBatch() + " (--max-batch)");
                }
                checkShape(t, java.util.Arrays.copyOfRange(a.shape, 1, a.shape.length), false, "instance 0");
                return new Prepared(sig, Map.of(t.key(), numeric(t, a)), true, a.shape[0]);
            }
        }
        List<Object> items = instanceList(instances);
        if (items.isEmpty()) {
            throw HttpError.bad("\"instances\" is empty");
        }
        if (items.size() > limits.maxBatch()) {
            throw HttpError.bad(items.size() + " instances in one request; the limit is " + limits.maxBatch() + " (--max-batch)");
        }
        boolean single = sig.inputs().size() == 1;
        Map<String, List<Object>> perInput = new LinkedHashMap<>();
        for (String key : sig.inputs().keySet()) {
            perInput.put(key, new ArrayList<>(items.size()));
        }
        for (int i = 0; i < items.size(); i++) {
            Object item = items.get(i);
            if (item instanceof Map<?, ?> m && !(single && isBinary(m))) {
                if (!m.keySet().equals(sig.inputs().keySet())) {
                    throw HttpError.bad("instance " + i + " names inputs " + m.keySet() + " but signature " + sig.name()
                            + " takes " + sig.inputs().keySet());
                }
                for (String key : sig.inputs().keySet()) {
                    perInput.get(key).add(m.get(key));
                }
            } else if (single) {
                perInput.values().iterator().next().add(item);
            } else {
                throw HttpError.bad("instance " + i + " must be an object naming the inputs " + sig.inputs().keySet());
            }
        }
        Map<String, Input> tensors = new LinkedHashMap<>();
        for (TensorInfo t : sig.inputs().values()) {
            tensors.put(t.key(), batch(t, perInput.get(t.key())));
        }
        return new Prepared(sig, tensors, true, items.size());
    }

    /** The instances as a list: a dense numeric batch is split back into its instances. */
    private static List<Object> instanceList(Object instances) throws HttpError {
        if (instances instanceof List<?> list) {
            return new ArrayList<>(list);
        }
        if (instances instanceof NumArray a && a.shape.length >= 2) {
            List<Object> out = new ArrayList<>(a.shape[0]);
            int[] inner = java.util.Arrays.copyOfRange(a.shape, 1, a.shape.length);
            int size = a.data.length / a.shape[0];
            for (int i = 0; i < a.shape[0]; i++) {
                out.add(new NumArray(inner, java.util.Arrays.copyOfRange(a.data, i * size, (i + 1) * size)));
            }
            return out;
        }
        if (instances instanceof NumArray) {
            throw HttpError.bad("\"instances\" is a list of numbers; each instance must be an image, [height][width][3]");
        }
        throw HttpError.bad("\"instances\" must be a list");
    }

    /** Stack one input's per-instance values into a batch tensor. */
    private Input batch(TensorInfo t, List<Object> values) throws HttpError {
        int n = values.size();
        if (t.dtype() == MetaGraph.DT_STRING) {
            if (t.shape() == null || t.shape().length != 1) {
                throw HttpError.bad("input " + t.key() + " is a string tensor of shape " + t.shapeText() + ", not served");
            }
            byte[][] out = new byte[n][];
            long pixels = 0;
            for (int i = 0; i < n; i++) {
                out[i] = binary(values.get(i), "instance " + i + ": input " + t.key());
                pixels += checkImage(out[i], "instance " + i).pixels();
                checkRequestPixels(pixels);
            }
            return new Input(out, new long[] {n});
        }
        NumArray first = null;
        for (int i = 0; i < n; i++) {
            Object v = values.get(i);
            if (!(v instanceof NumArray a)) {
                throw HttpError.bad("instance " + i + ": input " + t.key() + " must be " + expected(t, false) + describe(v));
            }
            if (first == null) {
                first = a;
                checkShape(t, a.shape, false, "instance " + i);
            } else if (!java.util.Arrays.equals(a.shape, first.shape)) {
                throw HttpError.bad("instances must all have one shape (they form one batch): instance 0 is "
                        + first.shapeText() + ", instance " + i + " is " + a.shapeText());
            }
        }
        int[] shape = new int[first.shape.length + 1];
        shape[0] = n;
        System.arraycopy(first.shape, 0, shape, 1, first.shape.length);
        double[] data = new double[n * first.data.length];
        for (int i = 0; i < n; i++) {
            System.arraycopy(((NumArray) values.get(i)).data, 0, data, i * first.data.length, first.data.length);
        }
        return numeric(t, new NumArray(shape, data));
    }

    // ------------------------------------------------------------------ columnar format

    private Prepared columns(Signature sig, Object inputs) throws HttpError {
        Map<String, Object> named = new LinkedHashMap<>();
        if (inputs instanceof Map<?, ?> m && !(sig.inputs().size() == 1 && isBinary(m))) {
            if (!m.keySet().equals(sig.inputs().keySet())) {
                throw HttpError.bad("\"inputs\" names " + m.keySet() + " but signature " + sig.name() + " takes "
                        + sig.inputs().keySet());
            }
            for (Map.Entry<?, ?> e : m.entrySet()) {
                named.put((String) e.getKey(), e.getValue());
            }
        } else if (sig.inputs().size() == 1) {
            named.put(sig.inputs().keySet().iterator().next(), inputs);
        } else {
            throw HttpError.bad("\"inputs\" must be an object naming the inputs " + sig.inputs().keySet());
        }
        Map<String, Input> tensors = new LinkedHashMap<>();
        int batch = -1;
        for (TensorInfo t : sig.inputs().values()) {
            Input in = column(t, named.get(t.key()));
            tensors.put(t.key(), in);
            batch = in.shape().length > 0 ? (int) in.shape()[0] : 1;
        }
        return new Prepared(sig, tensors, false, batch);
    }

    private Input column(TensorInfo t, Object value) throws HttpError {
        if (t.dtype() == MetaGraph.DT_STRING) {
            if (t.shape() == null || t.shape().length != 1) {
                throw HttpError.bad("input " + t.key() + " is a string tensor of shape " + t.shapeText() + ", not served");
            }
            if (!(value instanceof List<?> list) || list.isEmpty()) {
                throw HttpError.bad("input " + t.key() + " must be a non-empty list of {\"b64\": ...} values");
            }
            if (list.size() > limits.maxBatch()) {
                throw HttpError.bad(list.size() + " values in one request; the limit is " + limits.maxBatch() + " (--max-batch)");
            }
            byte[][] out = new byte[list.size()][];
            long pixels = 0;
            for (int i = 0; i < out.length; i++) {
                out[i] = binary(list.get(i), "input " + t.key() + "[" + i + "]");
                pixels += checkImage(out[i], "input " + t.key() + "[" + i + "]").pixels();
                checkRequestPixels(pixels);
            }
            return new Input(out, new long[] {out.length});
        }
        if (!(value instanceof NumArray a)) {
            throw HttpError.bad("input " + t.key() + " must be " + expected(t, true) + describe(value));
        }
        checkShape(t, a.shape, true, "input " + t.key());
        if (a.shape.length > 0 && a.shape[0] > limits.maxBatch()) {
            throw HttpError.bad(a.shape[0] + " values in one request; the limit is " + limits.maxBatch() + " (--max-batch)");
        }
        return numeric(t, a);
    }

    // ------------------------------------------------------------------ values

    private static byte[] binary(Object v, String where) throws HttpError {
        if (v instanceof Map<?, ?> m && isBinary(m)) {
            if (!(m.get("b64") instanceof String s)) {
                throw HttpError.bad(where + ": \"b64\" must be a string");
            }
            try {
                return Base64.getDecoder().decode(s);
            } catch (IllegalArgumentException e) {
                throw HttpError.bad(where + ": \"b64\" is not valid base64 (" + e.getMessage() + ")");
            }
        }
        if (v instanceof String s) {
            return s.getBytes(StandardCharsets.UTF_8);
        }
        throw HttpError.bad(where + " must be {\"b64\": \"<base64 of the encoded image>\"}" + describe(v));
    }

    /** The image header of an encoded value, within the pixel limit. */
    ImageHeader checkImage(byte[] data, String where) throws HttpError {
        ImageHeader h;
        try {
            h = ImageHeader.read(data);
        } catch (HttpError e) {
            throw HttpError.bad(where + ": " + e.getMessage());
        }
        if (h.pixels() > limits.maxPixels()) {
            throw new HttpError(413, where + ": the " + h.format().toUpperCase() + " image is " + h.width() + "x" + h.height()
                    + " = " + h.pixels() + " pixels, over the limit of " + limits.maxPixels() + " (--max-pixels)");
        }
        return h;
    }

    void checkRequestPixels(long pixels) throws HttpError {
        if (pixels > limits.maxRequestPixels()) {
            throw new HttpError(413, "the images of this request hold " + pixels + " pixels together, over the limit of "
                    + limits.maxRequestPixels() + " (--max-request-pixels)");
        }
    }

    private void checkShape(TensorInfo t, int[] got, boolean withBatch, String where) throws HttpError {
        long[] want = t.shape();
        if (want == null) {
            return;
        }
        int offset = withBatch ? 0 : 1;
        boolean ok = got.length == want.length - offset;
        for (int i = 0; ok && i < got.length; i++) {
            long w = want[i + offset];
            ok = w < 0 || w == got[i];
        }
        if (!ok) {
            throw HttpError.bad(where + ": input " + t.key() + " has shape " + java.util.Arrays.toString(got).replace(" ", "")
                    + "; signature wants " + expected(t, withBatch));
        }
        if (t.dtype() == MetaGraph.DT_UINT8 && want.length == 4) { // images: [batch, height, width, channels]
            long h = withBatch ? got[1] : got[0];
            long w = withBatch ? got[2] : got[1];
            if (h * w > limits.maxPixels()) {
                throw new HttpError(413, where + ": image of " + w + "x" + h + " pixels, over the limit of "
                        + limits.maxPixels() + " (--max-pixels)");
            }
        }
    }

    private static String expected(TensorInfo t, boolean withBatch) {
        long[] s = t.shape();
        String dtype = t.dtype() == MetaGraph.DT_UINT8 ? "integers 0..255" : "numbers";
        if (s == null) {
            return "an array of " + dtype;
        }
        StringBuilder sb = new StringBuilder();
        String[] names = t.dtype() == MetaGraph.DT_UINT8 && s.length == 4 ? new String[] {"batch", "height", "width", null}
                : null;
        for (int i = withBatch ? 0 : 1; i < s.length; i++) {
            String n = s[i] >= 0 ? Long.toString(s[i]) : names != null && names[i] != null ? names[i] : "n";
            sb.append('[').append(n).append(']');
        }
        return "a " + sb + " array of " + dtype;
    }

    private static String describe(Object v) {
        if (v instanceof NumArray a) {
            return ", got an array of shape " + a.shapeText();
        }
        if (v instanceof List<?> l) {
            return l.isEmpty() ? ", got an empty list" : ", got a ragged or non-numeric list";
        }
        if (v instanceof String) {
            return ", got a string";
        }
        if (v instanceof Map) {
            return ", got an object";
        }
        return ", got " + v;
    }

    private Input numeric(TensorInfo t, NumArray a) throws HttpError {
        long[] shape = new long[a.shape.length];
        for (int i = 0; i < shape.length; i++) {
            shape[i] = a.shape[i];
        }
        if (t.dtype() == MetaGraph.DT_UINT8) {
            if (shape.length == 4) {
                checkRequestPixels(shape[0] * shape[1] * shape[2]);
            }
            byte[] out = new byte[a.data.length];
            for (int i = 0; i < out.length; i++) {
                double d = a.data[i];
                if (d < 0 || d > 255 || d != Math.rint(d)) {
                    throw HttpError.bad("input " + t.key() + " takes integers 0..255, got " + d + " at flat index " + i);
                }
                out[i] = (byte) (int) d;
            }
            return new Input(out, shape);
        }
        if (t.dtype() == MetaGraph.DT_FLOAT) {
            float[] out = new float[a.data.length];
            for (int i = 0; i < out.length; i++) {
                out[i] = (float) a.data[i];
            }
            return new Input(out, shape);
        }
        throw HttpError.bad("input " + t.key() + " has dtype " + t.dtypeName() + ", which this service does not take");
    }

    // ------------------------------------------------------------------ answers

    /** TF Serving's answer: {"predictions": [per instance]} for rows, {"outputs": ...} for columns. */
    static String answer(Prepared p, Map<String, Output> outputs) {
        StringBuilder sb = new StringBuilder(256);
        boolean single = outputs.size() == 1;
        if (p.rows()) {
            sb.append("{\"predictions\": [");
            for (int i = 0; i < p.batch(); i++) {
                if (i > 0) {
                    sb.append(", ");
                }
                if (single) {
                    slice(sb, outputs.values().iterator().next(), i);
                } else {
                    sb.append('{');
                    boolean first = true;
                    for (Map.Entry<String, Output> e : outputs.entrySet()) {
                        sb.append(first ? "" : ", ");
                        first = false;
                        Json.quote(sb, e.getKey());
                        sb.append(": ");
                        slice(sb, e.getValue(), i);
                    }
                    sb.append('}');
                }
            }
            return sb.append("]}").toString();
        }
        sb.append("{\"outputs\": ");
        if (single) {
            Output o = outputs.values().iterator().next();
            nested(sb, o, 0, 0, o.shape().length == 0 ? 1 : count(o.shape(), 0));
        } else {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<String, Output> e : outputs.entrySet()) {
                sb.append(first ? "" : ", ");
                first = false;
                Json.quote(sb, e.getKey());
                sb.append(": ");
                Output o = e.getValue();
                nested(sb, o, 0, 0, o.shape().length == 0 ? 1 : count(o.shape(), 0));
            }
            sb.append('}');
        }
        return sb.append('}').toString();
    }

    /** Row {@code i} of an output (its first dimension is the batch). */
    private static void slice(StringBuilder sb, Output o, int i) {
        long[] s = o.shape();
        if (s.length == 0) {
            element(sb, o.values(), 0);
            return;
        }
        int size = count(s, 1);
        nested(sb, o, 1, i * size, size);
    }

    private static int count(long[] shape, int from) {
        long n = 1;
        for (int d = from; d < shape.length; d++) {
            n *= shape[d];
        }
        return (int) n;
    }

    /** The values [offset, offset + size) as nested arrays over dimensions dim.. of the shape. */
    private static void nested(StringBuilder sb, Output o, int dim, int offset, int size) {
        long[] s = o.shape();
        if (dim >= s.length) {
            element(sb, o.values(), offset);
            return;
        }
        sb.append('[');
        int step = s[dim] == 0 ? 0 : size / (int) s[dim];
        for (int k = 0; k < s[dim]; k++) {
            if (k > 0) {
                sb.append(", ");
            }
            nested(sb, o, dim + 1, offset + k * step, step);
        }
        sb.append(']');
    }

    private static void element(StringBuilder sb, Object values, int i) {
        if (values instanceof float[] f) {
            Json.number(sb, f[i]);
        } else if (values instanceof double[] d) {
            Json.number(sb, d[i]);
        } else if (values instanceof int[] v) {
            sb.append(v[i]);
        } else if (values instanceof long[] v) {
            sb.append(v[i]);
        } else if (values instanceof byte[] v) {
            sb.append(v[i] & 0xff);
        } else if (values instanceof byte[][] v) {
            Json.quote(sb, new String(v[i], StandardCharsets.UTF_8));
        } else {
            sb.append("null");
        }
    }
}
