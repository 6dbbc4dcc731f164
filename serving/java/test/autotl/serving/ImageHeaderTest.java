package autotl.serving;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.Arrays;

import javax.imageio.ImageIO;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Image sizes read from headers only, on real files the JDK encodes, and every truncation refused. */
class ImageHeaderTest {
    private static byte[] encode(String format, int width, int height) throws IOException {
        BufferedImage im = new BufferedImage(width, height, BufferedImage.TYPE_INT_RGB);
        for (int y = 0; y < height; y++) {
            for (int x = 0; x < width; x++) {
                im.setRGB(x, y, (x * 7 + y * 13) & 0xffffff);
            }
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        assertTrue(ImageIO.write(im, format, out), format);
        return out.toByteArray();
    }

    @ParameterizedTest
    @ValueSource(strings = {"png", "jpeg", "gif", "bmp"})
    void sizesOfRealImages(String format) throws Exception {
        ImageHeader h = ImageHeader.read(encode(format, 37, 21));
        assertEquals(format, h.format());
        assertEquals(37, h.width());
        assertEquals(21, h.height());
        assertEquals(37 * 21, h.pixels());
    }

    @Test
    void jpegWithSegmentsBeforeTheFrameHeader() throws Exception {
        byte[] jpeg = encode("jpeg", 640, 480);
        // an APP1 segment of 100 bytes after SOI: the walk must skip it
        byte[] app1 = new byte[104];
        app1[0] = (byte) 0xff;
        app1[1] = (byte) 0xe1;
        app1[2] = 0;
        app1[3] = 102;
        byte[] withApp = new byte[jpeg.length + app1.length];
        System.arraycopy(jpeg, 0, withApp, 0, 2);
        System.arraycopy(app1, 0, withApp, 2, app1.length);
        System.arraycopy(jpeg, 2, withApp, 2 + app1.length, jpeg.length - 2);
        ImageHeader h = ImageHeader.read(withApp);
        assertEquals(640, h.width());
        assertEquals(480, h.height());
    }

    @Test
    void aHugeDeclaredSizeIsReadWithoutDecoding() throws Exception {
        byte[] png = encode("png", 2, 2);
        png[16] = 0; png[17] = 1; png[18] = 0; png[19] = 0; // width 65536
        png[20] = 0; png[21] = 1; png[22] = 0; png[23] = 0; // height 65536
        assertEquals(65536L * 65536L, ImageHeader.read(png).pixels());
    }

    @ParameterizedTest
    @ValueSource(strings = {"png", "jpeg", "gif", "bmp"})
    void truncatedHeadersAreA400(String format) throws Exception {
        byte[] full = encode(format, 5, 4);
        int keep = switch (format) {
            case "png" -> 20;
            case "jpeg" -> 4;
            case "gif" -> 8;
            default -> 20;
        };
        HttpError e = assertThrows(HttpError.class, () -> ImageHeader.read(Arrays.copyOf(full, keep)));
        assertEquals(400, e.status);
        assertTrue(e.getMessage().toLowerCase().contains("truncated"), e.getMessage());
    }

    @Test
    void notAnImage() {
        HttpError e = assertThrows(HttpError.class, () -> ImageHeader.read("{\"instances\": []}".getBytes()));
        assertTrue(e.getMessage().contains("not a JPEG, PNG, GIF or BMP") && e.getMessage().contains("7b22"), e.getMessage());
        assertThrows(HttpError.class, () -> ImageHeader.read(new byte[0]));
    }

    @Test
    void zeroSizeIsRefused() throws Exception {
        byte[] gif = encode("gif", 3, 3);
        gif[6] = 0;
        gif[7] = 0;
        HttpError e = assertThrows(HttpError.class, () -> ImageHeader.read(gif));
        assertTrue(e.getMessage().contains("0x3"), e.getMessage());
    }

    @Test
    void jpegWithScanDataBeforeAFrameIsCorrupt() {
        byte[] d = {(byte) 0xff, (byte) 0xd8, (byte) 0xff, (byte) 0xda, 0, 2, 1, 2, 3};
        HttpError e = assertThrows(HttpError.class, () -> ImageHeader.read(d));
        assertTrue(e.getMessage().contains("corrupt JPEG"), e.getMessage());
    }
}
