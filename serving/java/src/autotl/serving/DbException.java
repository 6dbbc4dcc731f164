package autotl.serving;

/** An SQLite or PostgreSQL error from the lineage calls. */
final class DbException extends RuntimeException {
    DbException(String message) {
        super(message);
    }
}
