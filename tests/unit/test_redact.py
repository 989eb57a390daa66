"""Credentials are masked in URLs and in the messages that quote them (kubecast_api.redact)."""

from __future__ import annotations

import pytest

from kubecast_api import redact


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        # the userinfo password; the user stays
        ("rtsp://admin:hunter2x@cam.local:554/stream1", "rtsp://admin:***@cam.local:554/stream1"),
        # percent-encoded password (an "@" and a "/" in it)
        ("rtsp://admin:p%40ss%2Fw0rd@cam/s", "rtsp://admin:***@cam/s"),
        # no password: a bare user is often the token itself
        ("https://ghp_abcdef123456@git.example/x.m3u8", "https://***@git.example/x.m3u8"),
        ("rtsp://:only-a-password@cam/s", "rtsp://***@cam/s"),
        # IPv6 hosts, with and without a port
        ("rtsp://u:pw-6789@[2001:db8::1]:554/live", "rtsp://u:***@[2001:db8::1]:554/live"),
        ("http://[::1]/a/index.m3u8?token=t0k3n", "http://[::1]/a/index.m3u8?token=***"),
        # an unencoded "@" in the password: the userinfo ends at the last "@"
        ("rtsp://u:p@ss@cam/s", "rtsp://u:***@cam/s"),
        # an unencoded "/" or "?" in the password is still masked, not read as a path
        ("rtsp://u:pa/ss@cam/s", "rtsp://u:***@cam/s"),
        ("rtsp://u:pa?ss@cam/s", "rtsp://u:***@cam/s"),
        # every query value, and a bare item; the names stay
        (
            "https://cdn.example/live/index.m3u8?token=abc&key=def&sig=0a1b&expires=99",
            "https://cdn.example/live/index.m3u8?token=***&key=***&sig=***&expires=***",
        ),
        ("https://cdn.example/a.m3u8?SECRETVALUE", "https://cdn.example/a.m3u8?***"),
        # SRT: passphrase and streamid (an unencoded "#" starts the fragment, masked too)
        (
            "srt://ingest.example:9000?passphrase=longpassphrase&streamid=#!::r=live/s,m=publish",
            "srt://ingest.example:9000?passphrase=***&streamid=***#***",
        ),
        ("srt://[::1]:9000?streamid=publish/live/key42", "srt://[::1]:9000?streamid=***"),
        # RTMP: the stream key is the last path segment after the app
        ("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl", "rtmp://a.rtmp.youtube.com/live2/***"),
        ("rtmps://live.example:443/app/KEY123?bw=1", "rtmps://live.example:443/app/***?bw=***"),
        ("rtmp://user:pw@host/app", "rtmp://user:***@host/app"),
        # the fragment
        ("https://cdn.example/a.m3u8#access_token=x", "https://cdn.example/a.m3u8#***"),
        # nothing to hide
        ("rtmp://a.rtmp.youtube.com/live2", "rtmp://a.rtmp.youtube.com/live2"),
        ("http://127.0.0.1:8080/360p/index.m3u8", "http://127.0.0.1:8080/360p/index.m3u8"),
        ("file:///media/me@2x.mp4", "file:///media/me@2x.mp4"),
        ("not a url", "not a url"),
    ],
)
def test_credentials_in_a_url_are_masked(given: str, shown: str) -> None:
    assert redact.url(given) == shown


def test_an_at_sign_in_a_query_value_masks_more_rather_than_less() -> None:
    # Indistinguishable from a password holding "?": kubecast masks the larger part.
    assert redact.url("http://host/x?email=a@b.example") == "http://***@b.example"


def test_urls_inside_an_error_message_are_masked_and_the_rest_kept() -> None:
    message = (
        "cannot open the input: Connection refused"
        " (rtsp://cam:s3cr3t-pw@[::1]:8554/live?token=tok-9f2e). Retrying rtmp://h/app/K3Y-123."
    )
    assert redact.text(message) == (
        "cannot open the input: Connection refused"
        " (rtsp://cam:***@[::1]:8554/live?token=***). Retrying rtmp://h/app/***."
    )


def test_known_secrets_are_masked_outside_any_url() -> None:
    url = "rtsp://cam:p%40ss-w0rd@cam/live?token=tok-9f2e&transport=tcp"
    secrets = redact.secrets_of(url)
    # as written and decoded; "tcp" is too short to replace in free text
    assert secrets == {"p%40ss-w0rd", "p@ss-w0rd", "tok-9f2e"}
    said = redact.text("auth failed for p@ss-w0rd, token tok-9f2e, over tcp", secrets=secrets)
    assert said == "auth failed for ***, token ***, over tcp"


def test_the_stream_key_of_an_rtmp_url_is_a_known_secret() -> None:
    assert redact.secrets_of("rtmp://h/app/abcd-efgh-ijkl") == {"abcd-efgh-ijkl"}
    assert redact.secrets_of("rtmp://h/app") == set()
    assert redact.secrets_of("file:///media/clip.mp4") == set()
