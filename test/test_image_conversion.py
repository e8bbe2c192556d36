"""sensor_msgs/Image <-> numpy without cv_bridge: encodings, padding, endianness, validation."""
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages (sensor_msgs) not installed")

from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from flowclas_ros.image_codec import (  # noqa: E402
    SUPPORTED_ENCODINGS,
    ImageFormatError,
    ImageTooLarge,
    image_to_rgb,
    validate_image,
)
from flowclas_ros.node.image_conversion import (  # noqa: E402
    bgr_to_msg,
    heatmap_to_msg,
    mask_to_msg,
    numpy_to_msg,
)


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _header():
    h = Header(frame_id="camera_optical")
    h.stamp.sec, h.stamp.nanosec = 1234, 5678
    return h


@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_round_trip(rgb, pad):
    alpha = np.full(rgb.shape[:2] + (1,), 7, np.uint8)
    inputs = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    for enc, arr in inputs.items():
        row = arr.shape[1] * arr.shape[2]
        msg = numpy_to_msg(arr, enc, step=row + pad)
        assert msg.step == row + pad and len(msg.data) == msg.step * msg.height
        out = image_to_rgb(msg)
        assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.c_contiguous
        np.testing.assert_array_equal(out, rgb, err_msg=enc)


@pytest.mark.parametrize("pad", [0, 3])
def test_mono8_repeated_to_rgb(pad):
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = image_to_rgb(numpy_to_msg(grey, "mono8", step=7 + pad))
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("pad", [0, 2, 3])  # an odd pad makes rows start unaligned
def test_mono16_endianness_and_fixed_scale(big_endian, pad):
    grey = np.array([[0, 255, 256, 4095], [32768, 65280, 65535, 1000]], dtype=np.uint16)
    msg = numpy_to_msg(grey, "mono16", step=8 + pad, big_endian=big_endian)
    assert msg.is_bigendian == int(big_endian)
    out = image_to_rgb(msg)
    expected = (grey >> 8).astype(np.uint8)  # documented fixed scale v16 >> 8
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_mono16_byte_order_matters():
    grey = np.array([[0x0102]], dtype=np.uint16)
    little = numpy_to_msg(grey, "mono16", big_endian=False)
    little.is_bigendian = 1  # same bytes read as big-endian: 0x0201 -> 2
    assert image_to_rgb(little)[0, 0, 0] == 0x02
    assert image_to_rgb(numpy_to_msg(grey, "mono16", big_endian=True))[0, 0, 0] == 0x01


def test_output_is_a_copy(rgb):
    msg = numpy_to_msg(rgb, "rgb8")
    out = image_to_rgb(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert out[0, 0, 0] == rgb[0, 0, 0]


@pytest.mark.parametrize("pad", [0, 5])
def test_view_without_copy_only_where_the_rows_are_unpadded_rgb8(rgb, pad):
    """copy=False: an unpadded rgb8 frame is a read-only view of the message, else a copy."""
    msg = numpy_to_msg(rgb, "rgb8", step=rgb.shape[1] * 3 + pad)
    out = image_to_rgb(msg, copy=False)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous and out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8)) == (pad == 0)
    if pad == 0:
        assert not out.flags.writeable
        with pytest.raises(ValueError):
            out[0, 0, 0] = 1
    bgr = image_to_rgb(numpy_to_msg(rgb[:, :, ::-1], "bgr8"), copy=False)
    np.testing.assert_array_equal(bgr, rgb)
    assert bgr.flags.writeable  # converted: a copy


def _msg(**kw):
    m = Image(height=2, width=3, encoding="rgb8", step=9, is_bigendian=0)
    m.data = bytes(18)
    for k, v in kw.items():
        setattr(m, k, v)
    return m


@pytest.mark.parametrize("fields, words", [
    ({"encoding": "yuv422"}, "unsupported encoding"),
    ({"encoding": ""}, "unsupported encoding"),
    ({"encoding": "RGB8"}, "unsupported encoding"),
    ({"height": 0}, "empty"),
    ({"width": 0}, "empty"),
    ({"height": 0, "width": 0, "step": 0, "data": b""}, "empty"),
    ({"step": 8}, "step 8 is smaller"),
    ({"data": bytes(17)}, "17 bytes"),
    ({"data": bytes(19)}, "19 bytes"),
    ({"height": 3}, r"step \* height"),
    ({"step": 10}, r"step \* height"),  # padding declared but not present in data
    ({"encoding": "mono16", "step": 5}, "smaller"),
    ({"is_bigendian": 2}, "is_bigendian"),
])
def test_malformed_messages_raise_a_clear_error(fields, words):
    with pytest.raises(ImageFormatError, match=words):
        image_to_rgb(_msg(**fields))


def test_huge_declared_size_is_refused_without_allocation():
    # 100k x 100k rgb8 declared with 18 bytes of data: sizes do not add up; nothing allocated
    m = _msg(height=100_000, width=100_000, step=300_000)
    with pytest.raises(ImageFormatError, match="bytes"):
        validate_image(m)


def test_pixel_limit():
    m = _msg()
    assert validate_image(m, max_pixels=6).height == 2
    with pytest.raises(ImageTooLarge, match="max_image_pixels=5"):
        validate_image(m, max_pixels=5)
    assert issubclass(ImageTooLarge, ImageFormatError)
    assert validate_image(m, max_pixels=0).width == 3  # 0 / None: no limit
    # the limit is checked before the data size: a refused 8K header costs nothing
    big = _msg(height=4320, width=7680, step=7680 * 3)
    with pytest.raises(ImageTooLarge):
        validate_image(big, max_pixels=3840 * 2160)


def test_layout_reports_geometry():
    lay = validate_image(numpy_to_msg(np.zeros((4, 6), np.uint16), "mono16", step=14))
    geometry = (lay.height, lay.width, lay.channels, lay.bytes_per_channel, lay.step)
    assert geometry == (4, 6, 1, 2, 14)
    assert lay.row_bytes == 12


def test_outputs_carry_header_and_encodings():
    h = _header()
    hm = np.linspace(-3, 5, 12, dtype=np.float32).reshape(3, 4)
    m = heatmap_to_msg(hm, h)
    assert (m.encoding, m.height, m.width, m.step) == ("32FC1", 3, 4, 16)
    assert m.header.frame_id == "camera_optical" and m.header.stamp.sec == 1234
    assert m.header.stamp.nanosec == 5678
    dtype = np.dtype(">f4" if m.is_bigendian else "<f4")
    np.testing.assert_array_equal(np.frombuffer(m.data, dtype).reshape(3, 4), hm)

    mask = np.array([[0, 255], [255, 0]], np.uint8)
    mm = mask_to_msg(mask, h)
    assert (mm.encoding, mm.step) == ("mono8", 2)
    np.testing.assert_array_equal(np.frombuffer(mm.data, np.uint8).reshape(2, 2), mask)
    assert np.array_equal(np.frombuffer(mask_to_msg(mask > 0).data, np.uint8), mask.ravel())

    bgr = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    bm = bgr_to_msg(bgr, h)
    assert (bm.encoding, bm.step, bm.header.frame_id) == ("bgr8", 12, "camera_optical")
    # an output message reads back through the input path (bgr8 -> RGB)
    np.testing.assert_array_equal(image_to_rgb(bm), bgr[:, :, ::-1])


def test_heatmap_is_always_finite():
    hm = np.array([[np.nan, np.inf], [-np.inf, 1.5]], np.float32)
    m = heatmap_to_msg(hm)
    vals = np.frombuffer(m.data, np.float32 if not m.is_bigendian else ">f4")
    assert np.isfinite(vals).all() and vals[0] == 0 and vals[3] == 1.5
    assert vals[1] == np.finfo(np.float32).max and vals[2] == np.finfo(np.float32).min


def test_output_shape_checks():
    with pytest.raises(ValueError):
        heatmap_to_msg(np.zeros((2, 2, 1)))
    with pytest.raises(ValueError):
        mask_to_msg(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError):
        bgr_to_msg(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ImageFormatError):
        numpy_to_msg(np.zeros((2, 2), np.uint8), "yuv422")
    with pytest.raises(ValueError):
        numpy_to_msg(np.zeros((2, 2), np.uint8), "rgb8")


def test_supported_encodings():
    assert set(SUPPORTED_ENCODINGS) == {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"}
