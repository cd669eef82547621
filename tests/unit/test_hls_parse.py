"""The HLS playlist parser on playlists in the shape KVS writes (docs/wire.md)."""

from __future__ import annotations

import datetime as dt

import pytest

from kvsnb.playback.hls import PlaylistError, parse_master, parse_media

BASE = "http://127.0.0.1:1/archived-media/hls/v1/getHLSMasterPlaylist.m3u8?SessionToken=abc"

MASTER = """#EXTM3U
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,URI="getHLSMediaPlaylist.m3u8?SessionToken=abc&TrackNumber=2"
#EXT-X-STREAM-INF:CODECS="avc1.42c01f,mp4a.40.2",RESOLUTION=640x480,FRAME-RATE=30.000,BANDWIDTH=1100000,AUDIO="audio"
getHLSMediaPlaylist.m3u8?SessionToken=abc&TrackNumber=1
"""

MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:3
#EXT-X-MEDIA-SEQUENCE:4
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="getMP4InitFragment.mp4?SessionToken=abc&TrackNumber=1"
#EXT-X-PROGRAM-DATE-TIME:2023-05-17T13:48:35.994Z
#EXTINF:2.663,
getMP4MediaFragment.mp4?FragmentNumber=4&SessionToken=abc&TrackNumber=1
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2023-05-17T13:48:40.000Z
#EXTINF:2.000,
getMP4MediaFragment.mp4?FragmentNumber=5&SessionToken=abc&TrackNumber=1
#EXT-X-ENDLIST
"""


def test_master_playlist() -> None:
    (variant,) = parse_master(MASTER, BASE)
    assert variant.attributes["CODECS"] == "avc1.42c01f,mp4a.40.2"
    assert variant.attributes["RESOLUTION"] == "640x480"
    assert variant.uri.endswith("getHLSMediaPlaylist.m3u8?SessionToken=abc&TrackNumber=1")
    assert variant.uri.startswith("http://127.0.0.1:1/archived-media/hls/v1/")
    assert variant.audio_uri is not None and variant.audio_uri.endswith("TrackNumber=2")


def test_media_playlist() -> None:
    pl = parse_media(MEDIA, BASE)
    assert pl.target_duration == 3 and pl.media_sequence == 4 and pl.endlist
    assert pl.playlist_type == "VOD" and pl.version == 7
    a, b = pl.segments
    assert (a.sequence, b.sequence) == (4, 5)
    assert a.duration == pytest.approx(2.663)
    assert a.program_date_time == dt.datetime(2023, 5, 17, 13, 48, 35, 994000, tzinfo=dt.UTC)
    assert not a.discontinuity and b.discontinuity
    assert a.init_uri is not None and a.init_uri.endswith(
        "getMP4InitFragment.mp4?SessionToken=abc&TrackNumber=1"
    )


def test_bad_playlists() -> None:
    with pytest.raises(PlaylistError, match="EXTM3U"):
        parse_media("hello", BASE)
    with pytest.raises(PlaylistError, match="TARGETDURATION"):
        parse_media("#EXTM3U\n#EXTINF:1,\nseg.ts\n", BASE)
    with pytest.raises(PlaylistError, match="without #EXTINF"):
        parse_media("#EXTM3U\n#EXT-X-TARGETDURATION:2\nseg.ts\n", BASE)
    with pytest.raises(PlaylistError, match="STREAM-INF"):
        parse_master("#EXTM3U\n", BASE)
