package autotl.serving;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The signatures of a serialized {@code tensorflow.MetaGraphDef}, read from the protobuf wire format.
 *
 * <p>Only what serving needs is decoded: {@code signature_def} (field 5, a map of name to SignatureDef),
 * and in each SignatureDef its inputs (1), outputs (2) and method name (3); in each TensorInfo its
 * tensor name (1), dtype (2) and shape (3). Everything else (the graph itself, field 2, is most of the
 * bytes) is skipped by length. So the C API gets operation names from the model itself
 * ({@code serving_default_images:0}, {@code StatefulPartitionedCall_1:1}), not from a guess.
 */
final class MetaGraph {
    private MetaGraph() {}

    static final int DT_FLOAT = 1;
    static final int DT_DOUBLE = 2;
    static final int DT_INT32 = 3;
    static final int DT_UINT8 = 4;
    static final int DT_STRING = 7;
    static final int DT_INT64 = 9;

    /** One input or output: its graph tensor ("op:index"), dtype and shape (null: unknown rank; -1: unknown size). */
    record TensorInfo(String key, String tensor, int dtype, long[] shape) {
        String op() {
            int colon = tensor.lastIndexOf(':');
            return colon < 0 ? tensor : tensor.substring(0, colon);
        }

        int index() {
            int colon = tensor.lastIndexOf(':');
            return colon < 0 ? 0 : Integer.parseInt(tensor.substring(colon + 1));
        }

        String dtypeName() {
            return MetaGraph.dtypeName(dtype);
        }

        String shapeText() {
            if (shape == null) {
                return "unknown rank";
            }
            StringBuilder sb = new StringBuilder("[");
            for (int i = 0; i < shape.length; i++) {
                sb.append(i > 0 ? "," : "").append(shape[i]);
            }
            return sb.append(']').toString();
        }
    }

    /** A signature: inputs and outputs by key (sorted), and its method name. */
    record Signature(String name, Map<String, TensorInfo> inputs, Map<String, TensorInfo> outputs, String method) {}

    static String dtypeName(int dtype) {
        return switch (dtype) {
            case DT_FLOAT -> "DT_FLOAT";
            case DT_DOUBLE -> "DT_DOUBLE";
            case DT_INT32 -> "DT_INT32";
            case DT_UINT8 -> "DT_UINT8";
            case 5 -> "DT_INT16";
            case 6 -> "DT_INT8";
            case DT_STRING -> "DT_STRING";
            case DT_INT64 -> "DT_INT64";
            case 10 -> "DT_BOOL";
            default -> "DT_" + dtype;
        };
    }

    /** Every signature of the MetaGraphDef, by name (sorted). */
    static Map<String, Signature> signatures(byte[] metaGraphDef) {
        Map<String, Signature> out = new TreeMap<>();
        Reader r = new Reader(metaGraphDef, 0, metaGraphDef.length);
        while (r.more()) {
            int tag = r.tag();
            if (tag == (5 << 3 | 2)) {
                Reader entry = r.message();
                String name = null;
                Reader value = null;
                while (entry.more()) {
                    int t = entry.tag();
                    if (t == (1 << 3 | 2)) {
                        name = entry.string();
                    } else if (t == (2 << 3 | 2)) {
                        value = entry.message();
                    } else {
                        entry.skip(t);
                    }
                }
                if (name != null && value != null) {
                    out.put(name, signature(name, value));
                }
            } else {
                r.skip(tag);
            }
        }
        return out;
    }

    private static Signature signature(String name, Reader r) {
        Map<String, TensorInfo> inputs = new TreeMap<>();
        Map<String, TensorInfo> outputs = new TreeMap<>();
        String method = "";
        while (r.more()) {
            int tag = r.tag();
            if (tag == (1 << 3 | 2) || tag == (2 << 3 | 2)) {
                Reader entry = r.message();
                String key = null;
                Reader info = null;
                while (entry.more()) {
                    int t = entry.tag();
                    if (t == (1 << 3 | 2)) {
                        key = entry.string();
                    } else if (t == (2 << 3 | 2)) {
                        info = entry.message();
                    } else {
                        entry.skip(t);
                    }
                }
                if (key != null && info != null) {
                    (tag >>> 3 == 1 ? inputs : outputs).put(key, tensorInfo(key, info));
                }
            } else if (tag == (3 << 3 | 2)) {
                method = r.string();
            } else {
                r.skip(tag);
            }
        }
        return new Signature(name, inputs, outputs, method);
    }

    private static TensorInfo tensorInfo(String key, Reader r) {
        String tensor = "";
        int dtype = 0;
        long[] shape = null;
        while (r.more()) {
            int tag = r.tag();
            if (tag == (1 << 3 | 2)) {
                tensor = r.string();
            } else if (tag == (2 << 3)) {
                dtype = (int) r.varint();
            } else if (tag == (3 << 3 | 2)) {
                shape = shape(r.message());
            } else {
                r.skip(tag);
            }
        }
        return new TensorInfo(key, tensor, dtype, shape);
    }

    /** TensorShapeProto: dim (2) repeated {size (1)}, unknown_rank (3). */
    private static long[] shape(Reader r) {
        List<Long> dims = new ArrayList<>();
        boolean unknownRank = false;
        while (r.more()) {
            int tag = r.tag();
            if (tag == (2 << 3 | 2)) {
                Reader dim = r.message();
                long size = 0;
                while (dim.more()) {
                    int t = dim.tag();
                    if (t == (1 << 3)) {
                        size = dim.varint();
                    } else {
                        dim.skip(t);
                    }
                }
                dims.add(size);
            } else if (tag == (3 << 3)) {
                unknownRank = r.varint() != 0;
            } else {
                r.skip(tag);
            }
        }
        if (unknownRank) {
            return null;
        }
        long[] out = new long[dims.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = dims.get(i);
        }
        return out;
    }

    /** A bounded view of protobuf bytes. */
    private static final class Reader {
        private final byte[] buf;
        private int pos;
        private final int end;

        Reader(byte[] buf, int pos, int end) {
            this.buf = buf;
            this.pos = pos;
            this.end = end;
        }

        boolean more() {
            return pos < end;
        }

        int tag() {
            long t = varint();
            if (t <= 0 || t > Integer.MAX_VALUE) {
                throw new IllegalStateException("bad protobuf tag " + t);
            }
            return (int) t;
        }

        long varint() {
            long v = 0;
            for (int shift = 0; shift < 64; shift += 7) {
                if (pos >= end) {
                    throw new IllegalStateException("truncated MetaGraphDef");
                }
                byte b = buf[pos++];
                v |= (long) (b & 0x7f) << shift;
                if (b >= 0) {
                    return v;
                }
            }
            throw new IllegalStateException("bad protobuf varint");
        }

        Reader message() {
            long n = varint();
            if (n < 0 || n > end - pos) {
                throw new IllegalStateException("truncated MetaGraphDef");
            }
            Reader r = new Reader(buf, pos, pos + (int) n);
            pos += (int) n;
            return r;
        }

        String string() {
            Reader r = message();
            return new String(buf, r.pos, r.end - r.pos, StandardCharsets.UTF_8);
        }

        void skip(int tag) {
            switch (tag & 7) {
                case 0 -> varint();
                case 1 -> advance(8);
                case 2 -> message();
                case 5 -> advance(4);
                default -> throw new IllegalStateException("unsupported protobuf wire type " + (tag & 7));
            }
        }

        private void advance(int n) {
            if (n > end - pos) {
                throw new IllegalStateException("truncated MetaGraphDef");
            }
            pos += n;
        }
    }
}
