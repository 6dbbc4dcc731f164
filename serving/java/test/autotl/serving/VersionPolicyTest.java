package autotl.serving;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** TF Serving's version policies, and which folders of a base folder are versions. */
class VersionPolicyTest {
    private static final Set<Long> PRESENT = Set.of(1L, 2L, 5L, 9L);

    @Test
    void latestAllSpecific() throws UsageException {
        assertEquals(List.of(9L), List.copyOf(VersionPolicy.parse("latest").aspired(PRESENT)));
        assertEquals(List.of(5L, 9L), List.copyOf(VersionPolicy.parse("latest:2").aspired(PRESENT)));
        assertEquals(List.of(1L, 2L, 5L, 9L), List.copyOf(VersionPolicy.parse("latest:10").aspired(PRESENT)));
        assertEquals(List.of(1L, 2L, 5L, 9L), List.copyOf(VersionPolicy.parse("all").aspired(PRESENT)));
        assertEquals(List.of(2L, 9L), List.copyOf(VersionPolicy.parse("specific:9,2,3").aspired(PRESENT)));
        assertTrue(VersionPolicy.parse("latest").aspired(Set.of()).isEmpty());
        assertEquals("specific:2,3,9", VersionPolicy.parse("specific: 9, 2,3").toString());
    }

    @Test
    void badPoliciesAreUsageErrors() {
        for (String bad : new String[] {"newest", "latest:0", "latest:x", "all:2", "specific", "specific:", "specific:1,-2",
            "latest:5000"}) {
            UsageException e = assertThrows(UsageException.class, () -> VersionPolicy.parse(bad), bad);
            assertTrue(e.getMessage().startsWith("--version-policy " + bad), e.getMessage());
        }
    }

    @Test
    void versionFoldersAreWholeNumbers(@TempDir Path base) throws Exception {
        for (String name : new String[] {"1", "3", "12", "0", "-1", "2a", ".4.partial-123", "5.unverified", "x"}) {
            Files.createDirectory(base.resolve(name));
        }
        Files.writeString(base.resolve("7"), "a file, not a version");
        assertEquals(List.of(1L, 3L, 12L), List.copyOf(VersionPolicy.scan(base).keySet()));
        assertNull(VersionPolicy.versionOf("99999999999999999999"));
        assertEquals(7L, VersionPolicy.versionOf("007"));
    }
}
