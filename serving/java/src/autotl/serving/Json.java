package autotl.serving;

import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A strict, bounded JSON parser (RFC 8259) and a small writer.
 *
 * <p>Values: {@code Map<String, Object>} (insertion order; a repeated key is an error), {@code List<Object>},
 * {@code String}, {@code Double}, {@code Boolean} and {@link #NULL}. An array whose elements are all numbers,
 * or all {@link NumArray}s of one shape, is a {@link NumArray}: a dense shape + {@code double[]}, so a
 * [height][width][3] image costs 8 bytes a number, not an object per pixel. Nesting deeper than
 * {@code maxDepth} is an error (the parser recurses), and the input is a byte array the caller has already
 * bounded in size. Every error is an {@link HttpError} 400 naming the byte offset.
 */
final class Json {
    /** JSON null (Java null means "absent"). */
    static final Object NULL = new Object() {
        @Override
        public String toString() {
            return "null";
        }
    };

    /** A rectangular array of numbers. */
    static final class NumArray {
        final int[] shape;
        final double[] data;

        NumArray(int[] shape, double[] data) {
            this.shape = shape;
            this.data = data;
        }

        String shapeText() {
            return Arrays.toString(shape).replace(" ", "");
        }
    }

    private final byte[] buf;
    private final int end;
    private final int maxDepth;
    private int pos;

    private Json(byte[] buf, int len, int maxDepth) {
        this.buf = buf;
        this.end = len;
        this.maxDepth = maxDepth;
    }

    /** Parse the first {@code len} bytes of {@code buf} as one JSON value. */
    static Object parse(byte[] buf, int len, int maxDepth) throws HttpError {
        Json p = new Json(buf, len, maxDepth);
        p.skipSpace();
        if (p.pos >= p.end) {
            throw HttpError.bad("empty body: expected a JSON object");
        }
        Object value = p.value(0);
        p.skipSpace();
        if (p.pos != p.end) {
            throw p.error("unexpected data after the JSON value");
        }
        return value;
    }

    private HttpError error(String what) {
        return HttpError.bad("malformed JSON at byte " + pos + ": " + what);
    }

    private void skipSpace() {
        while (pos < end) {
            byte b = buf[pos];
            if (b == ' ' || b == '\n' || b == '\r' || b == '\t') {
                pos++;
            } else {
                return;
            }
        }
    }

    private Object value(int depth) throws HttpError {
        if (pos >= end) {
            throw error("unexpected end of input");
        }
        byte b = buf[pos];
        switch (b) {
            case '{':
                return object(depth + 1);
            case '[':
                return array(depth + 1);
            case '"':
                return string();
            case 't':
                literal("true");
                return Boolean.TRUE;
            case 'f':
                literal("false");
                return Boolean.FALSE;
            case 'n':
                literal("null");
                return NULL;
            default:
                if (b == '-' || (b >= '0' && b <= '9')) {
                    return number();
                }
                throw error("unexpected character '" + printable(b) + "'");
        }
    }

    static String clip(String s) {
        return s.length() <= 80 ? s : s.substring(0, 77) + "...";
    }

    private static String printable(byte b) {
        return b >= 0x20 && b < 0x7f ? String.valueOf((char) b) : String.format("\\x%02x", b & 0xff);
    }

    private void literal(String word) throws HttpError {
        int n = word.length();
        if (end - pos < n) {
            throw error("unexpected end of input");
        }
        for (int i = 0; i < n; i++) {
            if (buf[pos + i] != word.charAt(i)) {
                throw error("unknown literal (expected " + word + ")");
            }
        }
        pos += n;
    }

    private void enter(int depth) throws HttpError {
        if (depth > maxDepth) {
            throw HttpError.bad("JSON nested deeper than " + maxDepth + " levels");
        }
        pos++;
        skipSpace();
    }

    private Map<String, Object> object(int depth) throws HttpError {
        enter(depth);
        Map<String, Object> map = new LinkedHashMap<>();
        if (pos < end && buf[pos] == '}') {
            pos++;
            return map;
        }
        while (true) {
            if (pos >= end || buf[pos] != '"') {
                throw error("expected a quoted key");
            }
            String key = string();
            skipSpace();
            if (pos >= end || buf[pos] != ':') {
                throw error("expected ':' after a key");
            }
            pos++;
            skipSpace();
            Object v = value(depth);
            if (map.put(key, v) != null) {
                throw error("key \"" + clip(key) + "\" appears twice");
            }
            skipSpace();
            if (pos >= end) {
                throw error("unexpected end of input in an object");
            }
            byte b = buf[pos++];
            if (b == '}') {
                return map;
            }
            if (b != ',') {
                pos--;
                throw error("expected ',' or '}' in an object");
            }
            skipSpace();
        }
    }

    private Object array(int depth) throws HttpError {
        enter(depth);
        List<Object> items = new ArrayList<>();
        if (pos < end && buf[pos] == ']') {
            pos++;
            return items;
        }
        while (true) {
            items.add(value(depth));
            skipSpace();
            if (pos >= end) {
                throw error("unexpected end of input in an array");
            }
            byte b = buf[pos++];
            if (b == ']') {
                return dense(items);
            }
            if (b != ',') {
                pos--;
                throw error("expected ',' or ']' in an array");
            }
            skipSpace();
        }
    }

    /** The items as one NumArray when they are all numbers, or all NumArrays of one shape; else the list. */
    private static Object dense(List<Object> items) {
        Object first = items.get(0);
        if (first instanceof Double) {
            double[] data = new double[items.size()];
            for (int i = 0; i < data.length; i++) {
                if (!(items.get(i) instanceof Double d)) {
                    return items;
                }
                data[i] = d;
            }
            return new NumArray(new int[] {data.length}, data);
        }
        if (first instanceof NumArray f) {
            long total = (long) f.data.length * items.size();
            if (total > Integer.MAX_VALUE - 16) {
                return items;
            }
            for (Object o : items) {
                if (!(o instanceof NumArray a) || !Arrays.equals(a.shape, f.shape)) {
                    return items;
                }
            }
            double[] data = new double[(int) total];
            int at = 0;
            for (Object o : items) {
                double[] part = ((NumArray) o).data;
                System.arraycopy(part, 0, data, at, part.length);
                at += part.length;
            }
            int[] shape = new int[f.shape.length + 1];
            shape[0] = items.size();
            System.arraycopy(f.shape, 0, shape, 1, f.shape.length);
            return new NumArray(shape, data);
        }
        return items;
    }

    private Double number() throws HttpError {
        int start = pos;
        boolean negative = false;
        if (buf[pos] == '-') {
            negative = true;
            pos++;
        }
        if (pos >= end) {
            throw error("unexpected end of input in a number");
        }
        long whole = 0;
        int digits = 0;
        if (buf[pos] == '0') {
            pos++;
            digits = 1;
        } else if (buf[pos] >= '1' && buf[pos] <= '9') {
            while (pos < end && buf[pos] >= '0' && buf[pos] <= '9') {
                if (digits < 18) {
                    whole = whole * 10 + (buf[pos] - '0');
                }
                digits++;
                pos++;
            }
        } else {
            throw error("a number needs a digit after '-'");
        }
        boolean simple = digits < 18;
        if (pos < end && buf[pos] == '.') {
            pos++;
            simple = false;
            if (pos >= end || buf[pos] < '0' || buf[pos] > '9') {
                throw error("a number needs a digit after '.'");
            }
            while (pos < end && buf[pos] >= '0' && buf[pos] <= '9') {
                pos++;
            }
        }
        if (pos < end && (buf[pos] == 'e' || buf[pos] == 'E')) {
            pos++;
            simple = false;
            if (pos < end && (buf[pos] == '+' || buf[pos] == '-')) {
                pos++;
            }
            if (pos >= end || buf[pos] < '0' || buf[pos] > '9') {
                throw error("a number needs a digit in its exponent");
            }
            while (pos < end && buf[pos] >= '0' && buf[pos] <= '9') {
                pos++;
            }
        }
        if (simple) {
            return (double) (negative ? -whole : whole);
        }
        double d = Double.parseDouble(new String(buf, start, pos - start, StandardCharsets.US_ASCII));
        if (Double.isInfinite(d)) {
            pos = start;
            throw error("number out of range");
        }
        return d;
    }

    private String string() throws HttpError {
        pos++; // the opening quote
        int start = pos;
        boolean plain = true;
        while (pos < end) {
            byte b = buf[pos];
            if (b == '"') {
                break;
            }
            if (b == '\\') {
                plain = false;
                pos += 2;
                continue;
            }
            if ((b & 0xff) < 0x20) {
                throw error("control character in a string");
            }
            if (b < 0) {
                plain = false;
            }
            pos++;
        }
        if (pos >= end) {
            throw error("unterminated string");
        }
        if (plain) {
            return new String(buf, start, pos++ - start, StandardCharsets.ISO_8859_1);
        }
        int close = pos;
        pos = start;
        StringBuilder sb = new StringBuilder(close - start);
        CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT).onUnmappableCharacter(CodingErrorAction.REPORT);
        int run = pos;
        while (pos < close) {
            if (buf[pos] != '\\') {
                pos++;
                continue;
            }
            decode(utf8, run, pos, sb);
            pos++;
            byte e = buf[pos++];
            switch (e) {
                case '"' -> sb.append('"');
                case '\\' -> sb.append('\\');
                case '/' -> sb.append('/');
                case 'b' -> sb.append('\b');
                case 'f' -> sb.append('\f');
                case 'n' -> sb.append('\n');
                case 'r' -> sb.append('\r');
                case 't' -> sb.append('\t');
                case 'u' -> sb.append(hex4());
                default -> {
                    pos--;
                    throw error("bad escape '\\" + printable(e) + "'");
                }
            }
            run = pos;
        }
        decode(utf8, run, close, sb);
        pos = close + 1;
        return sb.toString();
    }

    private void decode(CharsetDecoder utf8, int from, int to, StringBuilder sb) throws HttpError {
        if (to <= from) {
            return;
        }
        try {
            CharBuffer chars = utf8.reset().decode(ByteBuffer.wrap(buf, from, to - from));
            sb.append(chars);
        } catch (CharacterCodingException e) {
            throw error("invalid UTF-8 in a string");
        }
    }

    private char hex4() throws HttpError {
        if (pos + 4 > end) {
            throw error("short \\u escape");
        }
        int v = 0;
        for (int i = 0; i < 4; i++) {
            int c = Character.digit(buf[pos++], 16);
            if (c < 0) {
                throw error("bad \\u escape");
            }
            v = v * 16 + c;
        }
        return (char) v;
    }

    // ------------------------------------------------------------------ writing

    /** {@code value} as JSON: Map, List, String, Number, Boolean, null/NULL, float[], NumArray (what {@link #parse} makes). */
    static String write(Object value) {
        StringBuilder sb = new StringBuilder(256);
        write(sb, value);
        return sb.toString();
    }

    static void write(StringBuilder sb, Object value) {
        if (value == null || value == NULL) {
            sb.append("null");
        } else if (value instanceof String s) {
            quote(sb, s);
        } else if (value instanceof Float f) {
            number(sb, f);
        } else if (value instanceof Double d) {
            number(sb, d);
        } else if (value instanceof Number || value instanceof Boolean) {
            sb.append(value);
        } else if (value instanceof Map<?, ?> map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : map.entrySet()) {
                if (!first) {
                    sb.append(", ");
                }
                first = false;
                quote(sb, String.valueOf(e.getKey()));
                sb.append(": ");
                write(sb, e.getValue());
            }
            sb.append('}');
        } else if (value instanceof List<?> list) {
            sb.append('[');
            for (int i = 0; i < list.size(); i++) {
                if (i > 0) {
                    sb.append(", ");
                }
                write(sb, list.get(i));
            }
            sb.append(']');
        } else if (value instanceof float[] fs) {
            sb.append('[');
            for (int i = 0; i < fs.length; i++) {
                if (i > 0) {
                    sb.append(", ");
                }
                number(sb, fs[i]);
            }
            sb.append(']');
        } else if (value instanceof NumArray a) {
            numArray(sb, a, 0, 0, a.data.length);
        } else {
            quote(sb, String.valueOf(value));
        }
    }

    private static void numArray(StringBuilder sb, NumArray a, int dim, int offset, int size) {
        if (dim == a.shape.length) {
            number(sb, a.data[offset]);
            return;
        }
        sb.append('[');
        int step = a.shape[dim] == 0 ? 0 : size / a.shape[dim];
        for (int k = 0; k < a.shape[dim]; k++) {
            sb.append(k > 0 ? ", " : "");
            numArray(sb, a, dim + 1, offset + k * step, step);
        }
        sb.append(']');
    }

    static void number(StringBuilder sb, float f) {
        if (Float.isFinite(f)) {
            sb.append(f);
        } else {
            sb.append("null");
        }
    }

    static void number(StringBuilder sb, double d) {
        if (!Double.isFinite(d)) {
            sb.append("null");
        } else if (d == Math.rint(d) && Math.abs(d) < 1e15) {
            sb.append((long) d);
        } else {
            sb.append(d);
        }
    }

    static void quote(StringBuilder sb, String s) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20 || c == 0x2028 || c == 0x2029 || Character.isSurrogate(c)
                            && !(Character.isHighSurrogate(c) && i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1)))
                            && !(Character.isLowSurrogate(c) && i > 0 && Character.isHighSurrogate(s.charAt(i - 1)))) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        sb.append('"');
    }
}
