package autotl.serving;

/** A mistake on the command line or in its files: one line to the user, exit code 2. */
final class UsageException extends Exception {
    UsageException(String message) {
        super(message);
    }
}
