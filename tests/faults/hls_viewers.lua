-- wrk script: HLS viewers of one live stream, each in a live player's loop: the
-- media playlist, then the newest segment it lists, again and again.
--
--   wrk -c 1000 -t 2 -d 20s -s hls_viewers.lua http://127.0.0.1:PORT -- /360p/index.m3u8 [PACE_MS]
--
-- wrk keeps one Lua state per thread, not per connection, so the alternation is per
-- thread: every other request of a thread is the playlist, the others are the newest
-- segment named by the last playlist that thread received. Over a thread's hundreds
-- of connections that is the same mix of requests as that many players make.
-- PACE_MS (default 0, as fast as the server answers): a random pause of 0..PACE_MS
-- before each request, so that a connection makes two requests per PACE_MS on
-- average, as a player that polls its playlist once per segment does.
--
-- Every response is checked: a non-2xx status, a playlist that is not a valid live
-- media playlist, or a segment that is not MPEG-TS (or fMP4) counts as an error. done()
-- prints one line, "HLS_VIEWERS {json}", which tests/faults/viewer_load.py reads.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("seed", #threads)
end

function init(args)
  playlist = args[1]
  pace = tonumber(args[2] or "0")
  dir = playlist:match("^(.*/)")
  newest = nil
  turn = 0
  playlists, segments, non2xx, invalid, wrong_type, seg_bytes = 0, 0, 0, 0, 0, 0
  statuses = {}
  playlist_request = wrk.format("GET", playlist)
  segment_request = nil
  math.randomseed(os.time() * 100 + seed)
end

function delay()
  if pace > 0 then
    return math.random(0, pace)
  end
  return 0
end

function request()
  turn = turn + 1
  if segment_request ~= nil and turn % 2 == 0 then
    return segment_request
  end
  return playlist_request
end

-- A live media playlist: the tag, a target duration, a media sequence, as many URIs
-- as EXTINF tags (at least one), a URI last, and no ENDLIST. Returns its newest URI.
local function newest_segment(body)
  local first, target, sequence, extinf, uris, last = nil, false, false, 0, 0, nil
  for line in body:gmatch("[^\r\n]+") do
    if first == nil then
      first = line
    end
    if line:sub(1, 1) == "#" then
      if line:find("^#EXT%-X%-TARGETDURATION:%d+$") then
        target = true
      elseif line:find("^#EXT%-X%-MEDIA%-SEQUENCE:%d+$") then
        sequence = true
      elseif line:find("^#EXTINF:") then
        extinf = extinf + 1
      elseif line == "#EXT-X-ENDLIST" then
        return nil
      end
      last = nil
    else
      uris = uris + 1
      last = line
    end
  end
  if first ~= "#EXTM3U" or not target or not sequence or extinf == 0 or uris ~= extinf then
    return nil
  end
  return last
end

local function header(headers, name)
  for key, value in pairs(headers) do
    if key:lower() == name then
      return value
    end
  end
  return nil
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
    return
  end
  local content_type = header(headers, "content-type") or ""
  if content_type:find("mpegurl", 1, true) then
    playlists = playlists + 1
    local uri = newest_segment(body)
    if uri == nil then
      invalid = invalid + 1
    elseif uri ~= newest then
      newest = uri
      segment_request = wrk.format("GET", dir .. uri)
    end
  elseif content_type == "video/mp2t" or content_type == "video/mp4" then
    segments = segments + 1
    seg_bytes = seg_bytes + #body
  else
    wrong_type = wrong_type + 1
  end
end

local function json(value)
  if type(value) == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, string.format("%q:%s", tostring(k), json(v)))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return tostring(value)
end

function done(summary, latency, requests)
  local total = {
    playlists = 0, segments = 0, non2xx = 0, invalid_playlists = 0, wrong_type = 0,
    segment_bytes = 0,
  }
  local by_status = {}
  for _, thread in ipairs(threads) do
    total.playlists = total.playlists + thread:get("playlists")
    total.segments = total.segments + thread:get("segments")
    total.non2xx = total.non2xx + thread:get("non2xx")
    total.invalid_playlists = total.invalid_playlists + thread:get("invalid")
    total.wrong_type = total.wrong_type + thread:get("wrong_type")
    total.segment_bytes = total.segment_bytes + thread:get("seg_bytes")
    for code, n in pairs(thread:get("statuses")) do
      by_status[code] = (by_status[code] or 0) + n
    end
  end
  total.statuses = by_status
  total.duration_us = summary.duration
  total.requests = summary.requests
  total.bytes = summary.bytes
  total.errors = summary.errors
  total.latency_us = {
    min = latency.min, mean = latency.mean, max = latency.max,
    p50 = latency:percentile(50), p90 = latency:percentile(90), p99 = latency:percentile(99),
  }
  io.write("HLS_VIEWERS " .. json(total) .. "\n")
end
