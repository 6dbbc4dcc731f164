package autotl.serving;

/** A TensorFlow error: TF_Code and TensorFlow's message. */
final class TfException extends RuntimeException {
    static final int INVALID_ARGUMENT = 3;
    static final int NOT_FOUND = 5;
    static final int RESOURCE_EXHAUSTED = 8;
    static final int FAILED_PRECONDITION = 9;
    static final int OUT_OF_RANGE = 11;

    final int code;

    TfException(int code, String message) {
        super(message);
        this.code = code;
    }

    /** The HTTP status this error maps to: a bad input is the client's (400), the rest is ours. */
    int httpStatus() {
        return switch (code) {
            case INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION -> 400;
            case RESOURCE_EXHAUSTED -> 503;
            default -> 500;
        };
    }
}
