from vidseg.secrets import mask


def test_password_is_masked_user_and_host_kept():
    assert mask("rtsp://admin:hunter2@10.0.0.5:554/stream1") == "rtsp://admin:***@10.0.0.5:554/stream1"


def test_masked_inside_a_sentence_and_every_occurrence():
    text = "cannot open 'rtsp://a:p1@h/x' (tried rtsp://b:p2@h2/y too)"
    out = mask(text)
    assert "p1" not in out and "p2" not in out
    assert out == "cannot open 'rtsp://a:***@h/x' (tried rtsp://b:***@h2/y too)"


def test_password_with_unescaped_at_and_colon():
    out = mask("rtsp://user:p@ss:w0rd@cam.local/live")
    assert out == "rtsp://user:***@cam.local/live"


def test_text_without_credentials_is_unchanged():
    for text in ("rtsp://cam.local:554/live", "rtsp://user@cam/live", "/dev/video0", "in.mp4",
                 "http://host/a:b@c"):
        assert mask(text) == text
