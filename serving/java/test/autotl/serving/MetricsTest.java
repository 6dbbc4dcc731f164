package autotl.serving;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashMap;
import java.util.Map;

import org.junit.jupiter.api.Test;

/** The Prometheus text format: counters by label, cumulative histogram buckets, escaping. */
class MetricsTest {
    /** Sample lines to values; every non-comment line must be "name{labels} value". */
    private static Map<String, Double> samples(String text) {
        Map<String, Double> out = new HashMap<>();
        for (String line : text.split("\n")) {
            if (line.startsWith("#") || line.isEmpty()) {
                assertTrue(line.isEmpty() || line.startsWith("# HELP ") || line.startsWith("# TYPE "), line);
                continue;
            }
            int space = line.lastIndexOf(' ');
            assertTrue(line.substring(0, space).matches("[a-zA-Z_:][a-zA-Z0-9_:]*(\\{.*\\})?"), line);
            out.put(line.substring(0, space), Double.parseDouble(line.substring(space + 1)));
        }
        return out;
    }

    @Test
    void countersAndHistograms() {
        Metrics m = new Metrics("a\"b");
        m.request("predict", 200, 0.004);
        m.request("predict", 200, 0.2);
        m.request("predict", 400, 0.0001);
        m.batch(3);
        m.batch(40);
        m.servedBy(2);
        m.loaded(true);
        Map<String, Double> s = samples(m.render());
        assertEquals(2.0, s.get("autotl_serving_requests_total{endpoint=\"predict\",status=\"200\"}"));
        assertEquals(1.0, s.get("autotl_serving_requests_total{endpoint=\"predict\",status=\"400\"}"));
        assertEquals(1.0, s.get("autotl_serving_request_duration_seconds_bucket{endpoint=\"predict\",le=\"0.001\"}"));
        assertEquals(2.0, s.get("autotl_serving_request_duration_seconds_bucket{endpoint=\"predict\",le=\"0.005\"}"));
        assertEquals(3.0, s.get("autotl_serving_request_duration_seconds_bucket{endpoint=\"predict\",le=\"+Inf\"}"));
        assertEquals(3.0, s.get("autotl_serving_request_duration_seconds_count{endpoint=\"predict\"}"));
        assertEquals(0.2041, s.get("autotl_serving_request_duration_seconds_sum{endpoint=\"predict\"}"), 1e-9);
        assertEquals(1.0, s.get("autotl_serving_batch_size_bucket{le=\"4\"}"));
        assertEquals(2.0, s.get("autotl_serving_batch_size_bucket{le=\"64\"}"));
        assertEquals(43.0, s.get("autotl_serving_batch_size_sum"));
        assertEquals(1.0, s.get("autotl_serving_predictions_total{model=\"a\\\"b\",version=\"2\"}"));
        assertEquals(1.0, s.get("autotl_serving_model_loads_total{model=\"a\\\"b\",result=\"ok\"}"));
        assertTrue(s.get("process_resident_memory_bytes") > 1e6);
    }
}
