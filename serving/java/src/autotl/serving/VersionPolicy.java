package autotl.serving;

import java.io.IOException;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collections;
import java.util.NavigableMap;
import java.util.NavigableSet;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;

/**
 * Which version folders of a base folder are served, as TF Serving's {@code model_version_policy}:
 * {@code latest} (the newest one; {@code latest:N} the newest N), {@code all}, or
 * {@code specific:1,3}. A version folder is {@code BASE_DIR/<n>/} with {@code n} a whole number
 * and an {@code autotl export} (or a SavedModel) inside; hidden folders, such as the staging folders
 * {@code autotl export} writes before it renames them into place, and other names are ignored.
 */
record VersionPolicy(Kind kind, int latest, NavigableSet<Long> specific) {
    enum Kind { LATEST, ALL, SPECIFIC }

    static final VersionPolicy LATEST = new VersionPolicy(Kind.LATEST, 1, Collections.emptyNavigableSet());

    /** {@code latest}, {@code latest:N}, {@code all} or {@code specific:1,3}. */
    static VersionPolicy parse(String text) throws UsageException {
        String t = text.trim();
        int colon = t.indexOf(':');
        String head = colon < 0 ? t : t.substring(0, colon);
        String arg = colon < 0 ? null : t.substring(colon + 1);
        switch (head) {
            case "latest":
                if (arg == null) {
                    return LATEST;
                }
                long n = number(arg, text);
                if (n > 1000) {
                    throw new UsageException("--version-policy " + text + ": keep at most 1000 versions");
                }
                return new VersionPolicy(Kind.LATEST, (int) n, Collections.emptyNavigableSet());
            case "all":
                if (arg != null) {
                    break;
                }
                return new VersionPolicy(Kind.ALL, 0, Collections.emptyNavigableSet());
            case "specific":
                if (arg == null || arg.isBlank()) {
                    break;
                }
                NavigableSet<Long> versions = new TreeSet<>();
                for (String v : arg.split(",")) {
                    versions.add(number(v.trim(), text));
                }
                return new VersionPolicy(Kind.SPECIFIC, 0, Collections.unmodifiableNavigableSet(versions));
            default:
                break;
        }
        throw new UsageException("--version-policy " + text + ": use latest, latest:N, all or specific:N[,N...]");
    }

    private static long number(String s, String whole) throws UsageException {
        try {
            long v = Long.parseLong(s);
            if (v >= 1) {
                return v;
            }
        } catch (NumberFormatException ignored) {
            // below
        }
        throw new UsageException("--version-policy " + whole + ": " + (s.isEmpty() ? "a number is missing" : s
                + " is not a version number (1 or more)"));
    }

    /** The versions to serve among {@code candidates} (present and not refused). */
    NavigableSet<Long> aspired(Set<Long> candidates) {
        NavigableSet<Long> sorted = new TreeSet<>(candidates);
        return switch (kind) {
            case ALL -> sorted;
            case SPECIFIC -> {
                sorted.retainAll(specific);
                yield sorted;
            }
            case LATEST -> {
                NavigableSet<Long> out = new TreeSet<>();
                for (Long v : sorted.descendingSet()) {
                    if (out.size() >= latest) {
                        break;
                    }
                    out.add(v);
                }
                yield out;
            }
        };
    }

    @Override
    public String toString() {
        return switch (kind) {
            case ALL -> "all";
            case SPECIFIC -> "specific:" + String.join(",", specific.stream().map(String::valueOf).toList());
            case LATEST -> latest == 1 ? "latest" : "latest:" + latest;
        };
    }

    /** The version folders of {@code base}: number to folder, for the names that are whole numbers 1 or more. */
    static NavigableMap<Long, Path> scan(Path base) throws IOException {
        NavigableMap<Long, Path> out = new TreeMap<>();
        try (DirectoryStream<Path> entries = Files.newDirectoryStream(base)) {
            for (Path p : entries) {
                Long v = versionOf(p.getFileName().toString());
                if (v != null && Files.isDirectory(p)) {
                    out.put(v, p);
                }
            }
        }
        return out;
    }

    /** The version a folder name stands for (digits only, at most 18 of them, 1 or more), or null. */
    static Long versionOf(String name) {
        if (name.isEmpty() || name.length() > 18 || !name.chars().allMatch(c -> c >= '0' && c <= '9')) {
            return null;
        }
        long v = Long.parseLong(name);
        return v >= 1 ? v : null;
    }
}
