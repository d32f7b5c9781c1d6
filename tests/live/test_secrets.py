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


def test_password_with_an_unescaped_slash_in_an_error_message():
    out = mask("cannot open rtsp://alice:pa/ss@127.0.0.1:8555/live: Invalid argument")
    assert out == "cannot open rtsp://alice:***@127.0.0.1:8555/live: Invalid argument"


def test_mistyped_and_upper_case_schemes():
    assert mask("input not found: RTSP://alice:s3cret@cam/live") == "input not found: RTSP://alice:***@cam/live"
    assert mask("input not found: rtsp:/alice:s3cret@cam/live") == "input not found: rtsp:/alice:***@cam/live"


def test_password_in_the_query_string():
    out = mask("rtsp://cam/live?user=alice&password=s3cret&channel=1 and ?PWD=x2")
    assert out == "rtsp://cam/live?user=alice&password=***&channel=1 and ?PWD=***"
