package autotl.serving;

import java.lang.reflect.Array;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

import autotl.serving.MetaGraph.Signature;
import autotl.serving.Model.Input;
import autotl.serving.Model.Output;

/**
 * Request batching as TF Serving's {@code --enable_batching}: concurrent requests to one signature are
 * gathered into one TensorFlow run of up to {@code maxBatch} images, waiting at most
 * {@code timeoutMicros} after the first one arrived, on {@code threads} batch threads.
 *
 * <p>One batch is open at a time; a request joins it when it has room and the same signature and the
 * same shape past the batch dimension, else the open batch is closed and the request opens the next,
 * so requests run in arrival order. A closed batch runs when a batch thread is free; while every batch
 * thread is busy, arriving requests fill the open batch, which is where batching pays. The inputs are
 * concatenated along the batch dimension and the outputs split back by rows. A batch that fails as a
 * whole is run again request by request, so one bad image fails only its own request. Signatures with
 * more than one input run alone.
 */
final class Batcher implements AutoCloseable {
    /** {@code threads == 0}: no batching, every request is its own run. */
    record Config(int maxBatch, long timeoutMicros, int threads) {
        boolean enabled() {
            return threads > 0;
        }
    }

    /** What runs a batch: the model, or a test's stand-in. */
    interface Runner {
        Map<String, Output> run(Signature signature, Map<String, Input> inputs) throws HttpError;
    }

    private static final class Task {
        final Signature signature;
        final String key;
        final Input input;
        final int rows;
        final CompletableFuture<Map<String, Output>> result = new CompletableFuture<>();

        Task(Signature signature, String key, Input input, int rows) {
            this.signature = signature;
            this.key = key;
            this.input = input;
            this.rows = rows;
        }

        boolean joins(Task other) {
            return signature == other.signature && input.values().getClass() == other.input.values().getClass()
                    && Arrays.equals(input.shape(), 1, input.shape().length, other.input.shape(), 1, other.input.shape().length);
        }
    }

    private static final class Batch {
        final List<Task> tasks = new ArrayList<>();
        final long deadline;
        int rows;

        Batch(Task first, long deadline) {
            this.deadline = deadline;
            add(first);
        }

        void add(Task t) {
            tasks.add(t);
            rows += t.rows;
        }
    }

    private final Runner runner;
    private final Config config;
    private final Metrics metrics;
    private final ReentrantLock lock = new ReentrantLock();
    private final Condition changed = lock.newCondition();
    private final Deque<Batch> closed = new ArrayDeque<>();
    private final List<Thread> threads = new ArrayList<>();
    private Batch open;
    private int waiting;
    private boolean stopping;

    Batcher(Runner runner, Config config, Metrics metrics, String name) {
        this.runner = runner;
        this.config = config;
        this.metrics = metrics;
        for (int i = 0; i < config.threads(); i++) {
            Thread t = new Thread(null, this::work, name + "-batch-" + (i + 1), 8L << 20);
            t.setDaemon(true);
            t.start();
            threads.add(t);
        }
    }

    /** Requests waiting for a batch thread. */
    int waiting() {
        lock.lock();
        try {
            return waiting;
        } finally {
            lock.unlock();
        }
    }

    /** Run {@code inputs} (a batch of {@code rows} along the first dimension), batched with others when enabled. */
    Map<String, Output> run(Signature signature, Map<String, Input> inputs, int rows) throws HttpError {
        if (!config.enabled() || inputs.size() != 1 || rows < 1 || rows > config.maxBatch()) {
            return runAlone(signature, inputs, rows);
        }
        Map.Entry<String, Input> only = inputs.entrySet().iterator().next();
        if (only.getValue().shape().length == 0 || only.getValue().shape()[0] != rows) {
            return runAlone(signature, inputs, rows);
        }
        Task task = new Task(signature, only.getKey(), only.getValue(), rows);
        enqueue(task);
        try {
            return task.result.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new HttpError(503, "interrupted while waiting for the batch", true, false);
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            if (cause instanceof HttpError h) {
                throw h;
            }
            if (cause instanceof RuntimeException r) {
                throw r;
            }
            if (cause instanceof Error err) {
                throw err;
            }
            throw new IllegalStateException(cause);
        }
    }

    private Map<String, Output> runAlone(Signature signature, Map<String, Input> inputs, int rows) throws HttpError {
        Map<String, Output> out = runner.run(signature, inputs);
        metrics.batch(rows);
        return out;
    }

    private void enqueue(Task task) throws HttpError {
        lock.lock();
        try {
            if (stopping) {
                throw new HttpError(503, "this model version is being unloaded; retry", true, false);
            }
            if (open != null && (!open.tasks.get(0).joins(task) || open.rows + task.rows > config.maxBatch())) {
                closed.add(open);
                open = null;
            }
            if (open == null) {
                open = new Batch(task, System.nanoTime() + TimeUnit.MICROSECONDS.toNanos(config.timeoutMicros()));
            } else {
                open.add(task);
            }
            if (open.rows >= config.maxBatch()) {
                closed.add(open);
                open = null;
            }
            waiting++;
            changed.signalAll();
        } finally {
            lock.unlock();
        }
    }

    private void work() {
        while (true) {
            Batch b = next();
            if (b == null) {
                return;
            }
            execute(b);
        }
    }

    /** The next batch to run: a closed one, or the open one once its deadline has passed; null when stopping. */
    private Batch next() {
        lock.lock();
        try {
            while (true) {
                Batch b = closed.poll();
                if (b == null && open != null && open.deadline - System.nanoTime() <= 0) {
                    b = open;
                    open = null;
                }
                if (b != null) {
                    waiting -= b.tasks.size();
                    return b;
                }
                if (stopping) {
                    return null;
                }
                if (open != null) {
                    changed.awaitNanos(open.deadline - System.nanoTime());
                } else {
                    changed.await();
                }
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return null;
        } finally {
            lock.unlock();
        }
    }

    private void execute(Batch b) {
        try {
            if (b.tasks.size() == 1) {
                Task t = b.tasks.get(0);
                t.result.complete(runAlone(t.signature, Map.of(t.key, t.input), t.rows));
                return;
            }
            Map<String, Output> out = runAlone(b.tasks.get(0).signature, Map.of(b.tasks.get(0).key, concat(b)), b.rows);
            List<Map<String, Output>> parts = split(out, b);
            if (parts != null) {
                for (int i = 0; i < b.tasks.size(); i++) {
                    b.tasks.get(i).result.complete(parts.get(i));
                }
                return;
            }
        } catch (HttpError | RuntimeException | OutOfMemoryError e) {
            if (b.tasks.size() == 1) {
                b.tasks.get(0).result.completeExceptionally(e);
                return;
            }
        } catch (Throwable e) {
            for (Task t : b.tasks) {
                t.result.completeExceptionally(e);
            }
            return;
        }
        for (Task t : b.tasks) { // one at a time: an error is only its own request's
            try {
                t.result.complete(runAlone(t.signature, Map.of(t.key, t.input), t.rows));
            } catch (Throwable e) {
                t.result.completeExceptionally(e);
            }
        }
    }

    /** The tasks' inputs, one after the other along the first dimension. */
    static Input concat(Batch b) {
        Task first = b.tasks.get(0);
        Object values = Array.newInstance(first.input.values().getClass().getComponentType(), rowSize(first) * b.rows);
        int at = 0;
        for (Task t : b.tasks) {
            int n = Array.getLength(t.input.values());
            System.arraycopy(t.input.values(), 0, values, at, n);
            at += n;
        }
        long[] shape = first.input.shape().clone();
        shape[0] = b.rows;
        return new Input(values, shape);
    }

    private static int rowSize(Task t) {
        return t.rows == 0 ? 0 : Array.getLength(t.input.values()) / t.rows;
    }

    /** Each task's rows of every output; null when an output is not batched (its first dimension is not the rows). */
    static List<Map<String, Output>> split(Map<String, Output> out, Batch b) {
        List<Map<String, Output>> parts = new ArrayList<>();
        for (int i = 0; i < b.tasks.size(); i++) {
            parts.add(new LinkedHashMap<>());
        }
        for (Map.Entry<String, Output> e : out.entrySet()) {
            Output o = e.getValue();
            if (o.shape().length == 0 || o.shape()[0] != b.rows) {
                return null;
            }
            int size = Array.getLength(o.values()) / b.rows;
            int row = 0;
            for (int i = 0; i < b.tasks.size(); i++) {
                int rows = b.tasks.get(i).rows;
                Object values = Array.newInstance(o.values().getClass().getComponentType(), rows * size);
                System.arraycopy(o.values(), row * size, values, 0, rows * size);
                long[] shape = o.shape().clone();
                shape[0] = rows;
                parts.get(i).put(e.getKey(), new Output(shape, values));
                row += rows;
            }
        }
        return parts;
    }

    /** Stop taking requests, run what is queued, and end the batch threads. */
    @Override
    public void close() {
        lock.lock();
        try {
            stopping = true;
            if (open != null) {
                closed.add(open);
                open = null;
            }
            changed.signalAll();
        } finally {
            lock.unlock();
        }
        for (Thread t : threads) {
            try {
                t.join(TimeUnit.SECONDS.toMillis(60));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
        }
    }
}
