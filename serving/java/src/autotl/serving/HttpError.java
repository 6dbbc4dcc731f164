package autotl.serving;

/** An error answer: the HTTP status and the message sent as {"error": "..."}. */
final class HttpError extends Exception {
    final int status;
    /** The connection should not be reused (shutting down, overloaded). */
    final boolean close;
    /** Discard what is left of the request body after answering (bounded), so the client reads the answer. */
    final boolean drain;

    HttpError(int status, String message) {
        this(status, message, false, true);
    }

    HttpError(int status, String message, boolean close, boolean drain) {
        super(message, null, false, false);
        this.status = status;
        this.close = close;
        this.drain = drain;
    }

    static HttpError bad(String message) {
        return new HttpError(400, message);
    }
}
