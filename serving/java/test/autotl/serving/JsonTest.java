package autotl.serving;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import autotl.serving.Json.NumArray;

/** The strict JSON parser: values, dense number arrays, every kind of malformed input, and the writer. */
class JsonTest {
    private static Object parse(String text) throws HttpError {
        byte[] b = text.getBytes(StandardCharsets.UTF_8);
        return Json.parse(b, b.length, 32);
    }

    private static HttpError error(String text) {
        return assertThrows(HttpError.class, () -> parse(text));
    }

    @Test
    void objectsKeepTheirOrderAndTypes() throws HttpError {
        Map<?, ?> m = (Map<?, ?>) parse(" {\"b\": \"x\\u00e9\\n\", \"a\": true, \"c\": null, \"d\": -1.5e2, \"e\": [\"s\", 1]} ");
        assertEquals(List.of("b", "a", "c", "d", "e"), List.copyOf(m.keySet()));
        assertEquals("x\u00e9\n", m.get("b"));
        assertEquals(Boolean.TRUE, m.get("a"));
        assertSame(Json.NULL, m.get("c"));
        assertEquals(-150.0, m.get("d"));
        assertEquals(List.of("s", 1.0), m.get("e"));
    }

    @Test
    void rectangularNumberArraysAreDense() throws HttpError {
        NumArray a = assertInstanceOf(NumArray.class, parse("[[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]"));
        assertArrayEquals(new int[] {2, 2, 3}, a.shape);
        assertEquals(12.0, a.data[11]);
        assertEquals(6.0, a.data[5]);
        assertEquals("[2,2,3]", a.shapeText());
    }

    @Test
    void raggedArraysStayLists() throws HttpError {
        Object v = parse("[[1, 2], [3]]");
        assertInstanceOf(List.class, v);
        assertEquals(2, ((List<?>) v).size());
    }

    @Test
    void surrogatePairsAndUtf8AreDecoded() throws HttpError {
        assertEquals("\uD83D\uDE00 \u00fc", parse("\"\\ud83d\\ude00 \u00fc\""));
    }

    @ParameterizedTest
    @ValueSource(strings = {"", "   ", "{", "[1, 2", "{\"a\": 1,}", "[1,]", "{\"a\" 1}", "{a: 1}", "tru", "nul",
        "01", "-", "1.", "1e", "\"abc", "\"\\x\"", "\"\\u12\"", "{\"a\": 1} x", "[1] [2]", "'a'", "NaN", "Infinity",
        "\"tab\tin string\"", "1e999"})
    void malformedInputIsA400(String text) {
        HttpError e = error(text);
        assertEquals(400, e.status);
        assertTrue(e.getMessage().contains("JSON") || e.getMessage().contains("empty body"), e.getMessage());
    }

    @Test
    void repeatedKeysAreRefused() {
        assertTrue(error("{\"a\": 1, \"a\": 2}").getMessage().contains("appears twice"));
    }

    @Test
    void invalidUtf8IsRefused() {
        byte[] b = {'"', (byte) 0xc3, (byte) 0x28, '"'};
        HttpError e = assertThrows(HttpError.class, () -> Json.parse(b, b.length, 32));
        assertTrue(e.getMessage().contains("UTF-8"), e.getMessage());
    }

    @Test
    void nestingIsBounded() throws HttpError {
        String ok = "[".repeat(32) + "]".repeat(32);
        parse(ok);
        HttpError e = error("[".repeat(10_000) + "]".repeat(10_000));
        assertTrue(e.getMessage().contains("deeper than 32"), e.getMessage());
    }

    @Test
    void onlyTheGivenLengthIsRead() throws HttpError {
        byte[] b = "[1, 2]garbage".getBytes(StandardCharsets.UTF_8);
        NumArray a = assertInstanceOf(NumArray.class, Json.parse(b, 6, 32));
        assertArrayEquals(new double[] {1, 2}, a.data);
    }

    @Test
    void errorsNameTheByteOffset() {
        assertTrue(error("{\"a\": [1, 2,, 3]}").getMessage().contains("at byte 12"), error("{\"a\": [1, 2,, 3]}").getMessage());
    }

    @Test
    void writerRoundTrips() throws HttpError {
        Map<String, Object> m = new java.util.LinkedHashMap<>();
        m.put("q", "a\"b\\c\n\u0001");
        m.put("n", 0.25);
        m.put("l", List.of(1L, Boolean.FALSE));
        m.put("z", null);
        String text = Json.write(m);
        Map<?, ?> back = (Map<?, ?>) parse(text);
        assertEquals("a\"b\\c\n\u0001", back.get("q"));
        assertEquals(0.25, back.get("n"));
        assertEquals(List.of(1.0, false), back.get("l"));
        assertSame(Json.NULL, back.get("z"));
    }
}
