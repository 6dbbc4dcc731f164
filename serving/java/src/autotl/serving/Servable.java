package autotl.serving;

import java.util.Map;
import java.util.function.Consumer;

/**
 * One loaded model version: its model, its batcher, the request handler over them, and a count of the
 * requests using it. A retired version takes no new requests and is closed when its last request ends,
 * so requests in flight during a reload finish on the model they started on.
 */
final class Servable {
    final long version;
    final Model model;
    final Batcher batcher;
    final Rest rest;
    final double loadSeconds;
    /** What /metadata adds for this version (labels, hashes, lineage); guarded by itself. */
    final Map<String, Object> info;
    private final Consumer<Servable> onClosed;
    private int refs;
    private boolean retired;
    private boolean closed;
    long deployment = -1;

    Servable(long version, Model model, Batcher batcher, Rest rest, double loadSeconds, Map<String, Object> info,
             Consumer<Servable> onClosed) {
        this.version = version;
        this.model = model;
        this.batcher = batcher;
        this.rest = rest;
        this.loadSeconds = loadSeconds;
        this.info = info;
        this.onClosed = onClosed;
    }

    /** Take a reference for one request; false once retired (the caller picks the version again). */
    synchronized boolean retain() {
        if (retired) {
            return false;
        }
        refs++;
        return true;
    }

    void release() {
        boolean close;
        synchronized (this) {
            refs--;
            close = retired && refs == 0 && !closed;
            closed |= close;
        }
        if (close) {
            closeNow();
        }
    }

    /** Take no new requests; close once the ones in flight have ended (now, if none is). */
    void retire() {
        boolean close;
        synchronized (this) {
            retired = true;
            close = refs == 0 && !closed;
            closed |= close;
        }
        if (close) {
            closeNow();
        }
    }

    synchronized boolean isClosed() {
        return closed;
    }

    synchronized int inUse() {
        return refs;
    }

    private void closeNow() {
        try {
            batcher.close();
            model.close();
        } finally {
            onClosed.accept(this);
        }
    }
}
