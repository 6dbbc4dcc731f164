package autotl.serving;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Deployments in the study's SQL lineage (the same database as autotl's {@code autotl_artifacts} and
 * {@code autotl_lineage}): a row in {@code autotl_deployments} when the service starts, its stop time on
 * a clean shutdown. The model is keyed by the SHA-256 of {@code savedmodel/saved_model.pb}, the hash
 * {@code autotl export} records, so {@code autotl lineage saved_model.pb} lists where it is deployed.
 *
 * <p>Storage URLs are SQLAlchemy's: {@code sqlite:///relative.db}, {@code sqlite:////absolute.db},
 * {@code postgresql[+driver]://user:pass@host:port/db?...} (given to libpq as a URI).
 */
final class Lineage {
    static final String TABLE = "autotl_deployments";

    private static final String COLUMNS = "sha256 VARCHAR(64) NOT NULL, model_path TEXT NOT NULL, "
            + "model_name VARCHAR(255) NOT NULL, url TEXT NOT NULL, host VARCHAR(255) NOT NULL, port INTEGER NOT NULL, "
            + "machine VARCHAR(255), pid INTEGER, service VARCHAR(255) NOT NULL, started VARCHAR(40) NOT NULL, "
            + "stopped VARCHAR(40))";
    private static final String SQLITE_DDL = "CREATE TABLE IF NOT EXISTS " + TABLE
            + " (id INTEGER PRIMARY KEY AUTOINCREMENT, " + COLUMNS;
    private static final String POSTGRES_DDL = "CREATE TABLE IF NOT EXISTS " + TABLE + " (id SERIAL PRIMARY KEY, " + COLUMNS;
    private static final String INDEX = "CREATE INDEX IF NOT EXISTS ix_" + TABLE + "_sha256 ON " + TABLE + " (sha256)";

    private final boolean postgres;
    private final String target; // the SQLite file, or the libpq URI
    final String shown; // the URL with its password masked

    private Lineage(boolean postgres, String target, String shown) {
        this.postgres = postgres;
        this.target = target;
        this.shown = shown;
    }

    /** The storage of a SQLAlchemy URL; SQLite files must exist (a study's database is never created here). */
    static Lineage open(String url) throws UsageException {
        int scheme = url.indexOf("://");
        if (scheme < 0) {
            throw new UsageException("--storage " + url + " is not a URL; pass e.g. sqlite:///runs/x/study.db or "
                    + "postgresql://user:pass@host/db");
        }
        String dialect = url.substring(0, scheme);
        int plus = dialect.indexOf('+');
        if (plus >= 0) {
            dialect = dialect.substring(0, plus); // the SQLAlchemy driver: postgresql+psycopg, sqlite+pysqlite
        }
        String rest = url.substring(scheme + 3);
        if (dialect.equals("sqlite")) {
            int q = rest.indexOf('?');
            String file = q >= 0 ? rest.substring(0, q) : rest;
            if (!file.startsWith("/") || file.length() < 2 || file.equals("/:memory:")) {
                throw new UsageException("--storage " + url + ": a SQLite URL names a file, sqlite:///relative/study.db "
                        + "or sqlite:////absolute/study.db");
            }
            Path path = Path.of(file.substring(1)).toAbsolutePath().normalize();
            if (!Files.isRegularFile(path)) {
                throw new UsageException("--storage " + url + ": no such database file " + path);
            }
            return new Lineage(false, path.toString(), url);
        }
        if (dialect.equals("postgresql") || dialect.equals("postgres")) {
            return new Lineage(true, "postgresql://" + rest, masked(url, scheme));
        }
        throw new UsageException("--storage " + url + ": only sqlite:// and postgresql:// storages are supported");
    }

    private static String masked(String url, int scheme) {
        int at = url.lastIndexOf('@');
        int colon = url.indexOf(':', scheme + 3);
        return at > 0 && colon > 0 && colon < at ? url.substring(0, colon + 1) + "***" + url.substring(at) : url;
    }

    /** Rows of one statement written with {@code ?} placeholders; cells are text or null. */
    List<String[]> rows(String sql, String... params) {
        byte[][] ps = new byte[params.length][];
        for (int i = 0; i < params.length; i++) {
            ps[i] = params[i] == null ? null : params[i].getBytes(StandardCharsets.UTF_8);
        }
        byte[][][] raw;
        if (postgres) {
            StringBuilder numbered = new StringBuilder();
            int n = 0;
            for (char c : sql.toCharArray()) {
                if (c == '?') {
                    numbered.append('$').append(++n);
                } else {
                    numbered.append(c);
                }
            }
            raw = Native.postgres(Model.utf8(target), Model.utf8(numbered.toString()), ps);
        } else {
            raw = Native.sqlite(Model.utf8(target), Model.utf8(sql), ps);
        }
        List<String[]> out = new ArrayList<>(raw.length);
        for (byte[][] row : raw) {
            String[] cells = new String[row.length];
            for (int i = 0; i < row.length; i++) {
                cells[i] = row[i] == null ? null : new String(row[i], StandardCharsets.UTF_8);
            }
            out.add(cells);
        }
        return out;
    }

    /** Create the deployments table if absent; two services starting at once may race on PostgreSQL. */
    private void ensureTable() {
        for (int attempt = 0; ; attempt++) {
            try {
                rows(postgres ? POSTGRES_DDL : SQLITE_DDL);
                rows(INDEX);
                return;
            } catch (DbException e) {
                if (attempt >= 3) {
                    throw e;
                }
                try {
                    Thread.sleep(200L * (attempt + 1));
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    throw e;
                }
            }
        }
    }

    /** Record that {@code model} is served at {@code url}; returns the deployment's id. */
    long recordStart(Model model, String name, String url, String host, int port, String machine, long pid,
                     String service, String started) {
        ensureTable();
        List<String[]> r = rows("INSERT INTO " + TABLE + " (sha256, model_path, model_name, url, host, port, machine, pid, "
                + "service, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                model.sha256, model.savedModel.resolve(Model.GRAPH_FILE).toString(), name, url, host,
                Integer.toString(port), machine, Long.toString(pid), service, started);
        return Long.parseLong(r.get(0)[0]);
    }

    void recordStop(long id, String stopped) {
        rows("UPDATE " + TABLE + " SET stopped = ? WHERE id = ?", stopped, Long.toString(id));
    }

    /**
     * What autotl's lineage tables say about the model (newest record first): the export's trial, study,
     * backbone, weights, data and metrics; an empty list when the tables do not exist or do not know it.
     */
    List<Map<String, Object>> describe(String sha256) {
        String exists = postgres
                ? "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('autotl_artifacts', 'autotl_lineage')"
                  + " AND table_schema = current_schema()"
                : "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('autotl_artifacts', 'autotl_lineage')";
        if (!"2".equals(rows(exists).get(0)[0])) {
            return List.of();
        }
        String[] names = {"artifact_id", "kind", "path", "trial_number", "study_name", "created", "backbone", "plugin",
            "weights_origin", "weights_sha256", "data_fingerprint", "data_source", "params", "metrics", "autotl_version"};
        List<Map<String, Object>> out = new ArrayList<>();
        for (String[] row : rows("SELECT a.id, a.kind, a.path, a.trial_number, a.study_name, a.created, l.backbone, "
                + "l.plugin, l.weights_origin, l.weights_sha256, l.data_fingerprint, l.data_source, l.params, l.metrics, "
                + "l.autotl_version FROM autotl_artifacts a JOIN autotl_lineage l ON l.artifact_id = a.id "
                + "WHERE a.sha256 = ? ORDER BY a.id DESC", sha256)) {
            Map<String, Object> rec = new LinkedHashMap<>();
            for (int i = 0; i < names.length; i++) {
                String cell = row[i];
                Object value = cell;
                if (cell != null && (names[i].equals("params") || names[i].equals("metrics"))) {
                    value = jsonOrText(cell);
                } else if (cell != null && (names[i].equals("artifact_id") || names[i].equals("trial_number"))) {
                    value = Long.parseLong(cell);
                }
                rec.put(names[i], value);
            }
            out.add(rec);
        }
        return out;
    }

    /** A JSON column's value when its text parses (Python may have written NaN, which JSON lacks), else the text. */
    static Object jsonOrText(String cell) {
        byte[] b = cell.getBytes(StandardCharsets.UTF_8);
        try {
            return Json.parse(b, b.length, 32);
        } catch (HttpError e) {
            return cell;
        }
    }
}
