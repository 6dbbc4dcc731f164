package autotl.serving;

/**
 * The JNI shim (native/autotl_tf.c): TensorFlow's C API and the two SQL calls.
 *
 * <p>Strings go in as UTF-8 byte arrays; SQL rows come back as arrays of UTF-8
 * cells ({@code null} for SQL NULL).
 */
final class Native {
    private Native() {}

    static {
        System.loadLibrary("autotl_tf");
    }

    /** TensorFlow's version (TF_Version). */
    static native String version();

    /** Load a SavedModel into one session; {@code metaGraphOut[0]} receives the serialized MetaGraphDef. */
    static native long load(byte[] dir, byte[][] tags, byte[] configProto, byte[][] metaGraphOut);

    /** The graph operation of that name, or 0. */
    static native long operation(long model, byte[] name);

    /**
     * Run the session. Inputs are byte[] (uint8), float[] or byte[][] (string) with their shapes;
     * returns, for each output, its shape (long[]) then its values (float[], double[], int[], long[],
     * byte[] or byte[][]).
     */
    static native Object[] run(long model, long[] inputOps, int[] inputIndex, Object[] inputValues, long[][] inputShapes,
                               long[] outputOps, int[] outputIndex);

    /** Close and free the session and its graph. */
    static native void close(long model);

    /** One statement ({@code ?} parameters) on an existing SQLite database file. */
    static native byte[][][] sqlite(byte[] path, byte[] sql, byte[][] params);

    /** One statement ({@code $1} parameters) on a new PostgreSQL connection (libpq conninfo or URI). */
    static native byte[][][] postgres(byte[] conninfo, byte[] sql, byte[][] params);
}
