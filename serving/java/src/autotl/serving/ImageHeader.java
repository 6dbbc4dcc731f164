package autotl.serving;

/**
 * The format and size of an encoded image, read from its header only (JPEG SOF, PNG IHDR, GIF logical
 * screen, BMP DIB header), so an image that would decode to too many pixels is refused before
 * TensorFlow allocates them. The formats are the ones the SavedModel's {@code serving_bytes} decodes.
 */
record ImageHeader(String format, long width, long height) {

    long pixels() {
        return width * height;
    }

    /** The header of {@code data}, or a 400 saying why it is not a usable image. */
    static ImageHeader read(byte[] data) throws HttpError {
        int n = data.length;
        if (n == 0) {
            throw HttpError.bad("empty image: the body holds no bytes");
        }
        ImageHeader h;
        if (n >= 8 && u8(data, 0) == 0x89 && data[1] == 'P' && data[2] == 'N' && data[3] == 'G'
                && u8(data, 4) == 0x0d && u8(data, 5) == 0x0a && u8(data, 6) == 0x1a && u8(data, 7) == 0x0a) {
            if (n < 24 || data[12] != 'I' || data[13] != 'H' || data[14] != 'D' || data[15] != 'R') {
                throw HttpError.bad("truncated or corrupt PNG: no IHDR header");
            }
            h = new ImageHeader("png", u32be(data, 16), u32be(data, 20));
        } else if (n >= 3 && u8(data, 0) == 0xff && u8(data, 1) == 0xd8 && u8(data, 2) == 0xff) {
            h = jpeg(data);
        } else if (n >= 6 && data[0] == 'G' && data[1] == 'I' && data[2] == 'F' && data[3] == '8'
                && (data[4] == '7' || data[4] == '9') && data[5] == 'a') {
            if (n < 10) {
                throw HttpError.bad("truncated GIF header");
            }
            h = new ImageHeader("gif", u16le(data, 6), u16le(data, 8));
        } else if (n >= 2 && data[0] == 'B' && data[1] == 'M') {
            h = bmp(data);
        } else {
            StringBuilder first = new StringBuilder();
            for (int i = 0; i < Math.min(n, 8); i++) {
                first.append(String.format("%02x", u8(data, i)));
            }
            throw HttpError.bad("not a JPEG, PNG, GIF or BMP image (it starts with bytes " + first + ")");
        }
        if (h.width <= 0 || h.height <= 0) {
            throw HttpError.bad(h.format.toUpperCase() + " header says " + h.width + "x" + h.height + " pixels");
        }
        return h;
    }

    /** Walk the JPEG segments up to the first frame header (SOF0..SOF15 but DHT, JPG, DAC). */
    private static ImageHeader jpeg(byte[] d) throws HttpError {
        int i = 2;
        while (true) {
            while (i < d.length && u8(d, i) != 0xff) {
                i++; // garbage between segments: libjpeg skips it too
            }
            while (i < d.length && u8(d, i) == 0xff) {
                i++; // fill bytes
            }
            if (i >= d.length) {
                throw HttpError.bad("truncated JPEG: no frame header (SOF) found");
            }
            int marker = u8(d, i++);
            if (marker == 0xd8 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
                continue; // segments without a length
            }
            if (marker == 0xd9 || marker == 0xda) {
                throw HttpError.bad("corrupt JPEG: image data before any frame header (SOF)");
            }
            if (i + 2 > d.length) {
                throw HttpError.bad("truncated JPEG header");
            }
            int length = u16be(d, i);
            if (length < 2) {
                throw HttpError.bad("corrupt JPEG: bad segment length");
            }
            boolean sof = marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc;
            if (sof) {
                if (i + 7 > d.length) {
                    throw HttpError.bad("truncated JPEG frame header");
                }
                return new ImageHeader("jpeg", u16be(d, i + 5), u16be(d, i + 3));
            }
            i += length;
        }
    }

    private static ImageHeader bmp(byte[] d) throws HttpError {
        if (d.length < 26) {
            throw HttpError.bad("truncated BMP header");
        }
        long dib = u32le(d, 14);
        if (dib == 12) {
            return new ImageHeader("bmp", u16le(d, 18), u16le(d, 20));
        }
        if (dib < 40) {
            throw HttpError.bad("unsupported BMP header (size " + dib + ")");
        }
        long w = (int) u32le(d, 18);
        long h = Math.abs((long) (int) u32le(d, 22)); // negative: rows stored top-down
        return new ImageHeader("bmp", w, h);
    }

    private static int u8(byte[] d, int i) {
        return d[i] & 0xff;
    }

    private static int u16be(byte[] d, int i) {
        return u8(d, i) << 8 | u8(d, i + 1);
    }

    private static int u16le(byte[] d, int i) {
        return u8(d, i) | u8(d, i + 1) << 8;
    }

    private static long u32be(byte[] d, int i) {
        return (long) u16be(d, i) << 16 | u16be(d, i + 2);
    }

    private static long u32le(byte[] d, int i) {
        return (long) u16le(d, i + 2) << 16 | u16le(d, i);
    }
}
