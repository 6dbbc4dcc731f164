package autotl.serving;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import autotl.serving.MetaGraph.Signature;
import autotl.serving.MetaGraph.TensorInfo;
import autotl.serving.Model.Input;
import autotl.serving.Model.Output;

/**
 * The batcher over a stand-in model that computes, per row, the sum of its bytes and the row's first
 * byte as a string: every answer must equal the unbatched one, batches must respect the limit and the
 * shapes, and one bad row must fail only its own request.
 */
class BatcherTest {
    private static final Signature PIXELS = new Signature("serving_default",
            Map.of("images", new TensorInfo("images", "images:0", MetaGraph.DT_UINT8, new long[] {-1, -1, -1, 3})),
            Map.of("sums", new TensorInfo("sums", "out:0", MetaGraph.DT_FLOAT, new long[] {-1, 2}),
                    "first", new TensorInfo("first", "out:1", MetaGraph.DT_STRING, new long[] {-1})),
            "tensorflow/serving/predict");

    /** The stand-in model; counts its runs and their sizes, and fails on a row starting with byte 99. */
    private static final class Fake implements Batcher.Runner {
        final List<Integer> runs = Collections.synchronizedList(new ArrayList<>());
        final List<long[]> shapes = Collections.synchronizedList(new ArrayList<>());
        volatile long sleepMillis;
        volatile boolean scalarOutput;

        @Override
        public Map<String, Output> run(Signature signature, Map<String, Input> inputs) throws HttpError {
            Input in = inputs.get("images");
            byte[] v = (byte[]) in.values();
            int rows = (int) in.shape()[0];
            int size = v.length / rows;
            runs.add(rows);
            shapes.add(in.shape());
            float[] sums = new float[rows * 2];
            byte[][] first = new byte[rows][];
            for (int r = 0; r < rows; r++) {
                if (v[r * size] == 99) {
                    throw new HttpError(400, "row " + r + " is bad");
                }
                long s = 0;
                for (int i = 0; i < size; i++) {
                    s += v[r * size + i] & 0xff;
                }
                sums[2 * r] = s;
                sums[2 * r + 1] = -s;
                first[r] = Integer.toString(v[r * size] & 0xff).getBytes();
            }
            sleep(sleepMillis);
            if (scalarOutput) {
                return Map.of("sums", new Output(new long[] {}, new float[] {rows}));
            }
            return Map.of("sums", new Output(new long[] {rows, 2}, sums), "first", new Output(new long[] {rows}, first));
        }
    }

    private final Metrics metrics = new Metrics("test");
    private final List<Batcher> batchers = new ArrayList<>();
    private final ExecutorService clients = Executors.newFixedThreadPool(24);

    private Batcher batcher(Fake fake, int maxBatch, long timeoutMicros, int threads) {
        Batcher b = new Batcher(fake, new Batcher.Config(maxBatch, timeoutMicros, threads), metrics, "test");
        batchers.add(b);
        return b;
    }

    @AfterEach
    void close() {
        clients.shutdownNow();
        batchers.forEach(Batcher::close);
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** {@code rows} images of {@code side} x {@code side} x 3, filled from {@code seed}. */
    private static Map<String, Input> images(int rows, int side, int seed) {
        byte[] v = new byte[rows * side * side * 3];
        for (int i = 0; i < v.length; i++) {
            v[i] = (byte) ((seed * 31 + i * 7) % 97);
        }
        return Map.of("images", new Input(v, new long[] {rows, side, side, 3}));
    }

    private static void assertSameAnswer(Map<String, Output> want, Map<String, Output> got) {
        assertArrayEquals(want.get("sums").shape(), got.get("sums").shape());
        assertArrayEquals((float[]) want.get("sums").values(), (float[]) got.get("sums").values());
        assertArrayEquals((byte[][]) want.get("first").values(), (byte[][]) got.get("first").values());
    }

    @Test
    void concurrentRequestsShareRunsAndGetTheirOwnRows() throws Exception {
        Fake fake = new Fake();
        fake.sleepMillis = 20; // requests arriving meanwhile fill the next batch
        Batcher b = batcher(fake, 8, 5_000, 1);
        Fake reference = new Fake();
        List<Future<?>> done = new ArrayList<>();
        CountDownLatch go = new CountDownLatch(1);
        for (int k = 0; k < 40; k++) {
            int seed = k;
            int rows = 1 + k % 3;
            done.add(clients.submit(() -> {
                go.await();
                Map<String, Input> in = images(rows, 4, seed);
                assertSameAnswer(reference.run(PIXELS, in), b.run(PIXELS, in, rows));
                return null;
            }));
        }
        go.countDown();
        for (Future<?> f : done) {
            f.get(60, TimeUnit.SECONDS);
        }
        int images = fake.runs.stream().mapToInt(Integer::intValue).sum();
        assertEquals(14 * 1 + 13 * 2 + 13 * 3, images, "every image ran exactly once"); // k % 3 == 0, 1, 2
        assertTrue(fake.runs.size() < 40, "some requests shared a run: " + fake.runs);
        assertTrue(fake.runs.stream().allMatch(n -> n <= 8), "no batch over --max-batch: " + fake.runs);
        assertTrue(metrics.render().contains("autotl_serving_batch_size_count " + fake.runs.size()), metrics.render());
    }

    @Test
    void imagesOfAnotherSizeAreNotMixedIn() throws Exception {
        Fake fake = new Fake();
        fake.sleepMillis = 10;
        Batcher b = batcher(fake, 64, 20_000, 1);
        List<Future<?>> done = new ArrayList<>();
        for (int k = 0; k < 12; k++) {
            int side = 2 + k % 2;
            int seed = k;
            done.add(clients.submit(() -> {
                Map<String, Input> in = images(1, side, seed);
                assertSameAnswer(new Fake().run(PIXELS, in), b.run(PIXELS, in, 1));
                return null;
            }));
        }
        for (Future<?> f : done) {
            f.get(60, TimeUnit.SECONDS);
        }
        for (long[] shape : fake.shapes) {
            assertTrue(shape[1] == shape[2] && (shape[1] == 2 || shape[1] == 3), java.util.Arrays.toString(shape));
        }
        assertEquals(12, fake.runs.stream().mapToInt(Integer::intValue).sum());
    }

    @Test
    void aBadRowFailsOnlyItsOwnRequest() throws Exception {
        Fake fake = new Fake();
        fake.sleepMillis = 30;
        Batcher b = batcher(fake, 16, 50_000, 1);
        List<Future<String>> done = new ArrayList<>();
        CountDownLatch go = new CountDownLatch(1);
        for (int k = 0; k < 8; k++) {
            int seed = k;
            done.add(clients.submit(() -> {
                go.await();
                Map<String, Input> in = images(1, 3, seed);
                if (seed == 5) {
                    ((byte[]) in.get("images").values())[0] = 99;
                }
                try {
                    assertSameAnswer(new Fake().run(PIXELS, in), b.run(PIXELS, in, 1));
                    return "ok";
                } catch (HttpError e) {
                    return e.status + " " + e.getMessage();
                }
            }));
        }
        go.countDown();
        for (int k = 0; k < 8; k++) {
            assertEquals(k == 5 ? "400 row 0 is bad" : "ok", done.get(k).get(60, TimeUnit.SECONDS));
        }
        assertTrue(fake.runs.stream().anyMatch(n -> n > 1), "the failing batch was a real batch: " + fake.runs);
    }

    @Test
    void outputsWithoutABatchDimensionRunRequestByRequest() throws Exception {
        Fake fake = new Fake();
        fake.scalarOutput = true;
        fake.sleepMillis = 10;
        Batcher b = batcher(fake, 16, 30_000, 1);
        List<Future<Map<String, Output>>> done = new ArrayList<>();
        for (int k = 0; k < 6; k++) {
            int seed = k;
            done.add(clients.submit(() -> b.run(PIXELS, images(2, 2, seed), 2)));
        }
        for (Future<Map<String, Output>> f : done) {
            assertArrayEquals(new float[] {2}, (float[]) f.get(60, TimeUnit.SECONDS).get("sums").values());
        }
    }

    @Test
    void disabledMeansOneRunPerRequest() throws Exception {
        Fake fake = new Fake();
        Batcher b = batcher(fake, 8, 100_000, 0);
        for (int k = 0; k < 5; k++) {
            assertSameAnswer(new Fake().run(PIXELS, images(2, 2, k)), b.run(PIXELS, images(2, 2, k), 2));
        }
        assertEquals(List.of(2, 2, 2, 2, 2), fake.runs);
    }

    @Test
    void aLoneRequestWaitsForTheTimeoutAndAFullBatchDoesNot() throws Exception {
        Fake fake = new Fake();
        Batcher b = batcher(fake, 8, 200_000, 2);
        long t0 = System.nanoTime();
        b.run(PIXELS, images(1, 2, 1), 1);
        assertTrue(System.nanoTime() - t0 >= 190_000_000L, "a lone request ran before the batch timeout");
        // with a timeout of a minute, a request that fills the batch still runs at once
        Batcher patient = batcher(fake, 8, 60_000_000, 1);
        Future<Map<String, Output>> full = clients.submit(() -> patient.run(PIXELS, images(8, 2, 1), 8));
        assertArrayEquals(new long[] {8, 2}, full.get(30, TimeUnit.SECONDS).get("sums").shape());
    }

    @Test
    void aClosedBatcherRefusesWith503() {
        Batcher b = batcher(new Fake(), 8, 0, 1);
        b.close();
        HttpError e = assertThrows(HttpError.class, () -> b.run(PIXELS, images(1, 2, 1), 1));
        assertEquals(503, e.status);
    }
}
