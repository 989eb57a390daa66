// kubecast preview player.
//
// Plays master.m3u8 with hls.js (served by this origin, never a CDN), or with the
// browser's own HLS where there is no MSE (iOS Safari), and polls player/status every 2 s.
// Where the worker offers WHEP (data-whep), a viewer may pick WebRTC instead (the Playback
// choice, or ?mode=whep): one RTCPeerConnection receiving a rendition, no ICE servers, the
// offer POSTed once gathering is complete (the worker does not take trickle ICE).
// Every URL is relative: the page may sit behind a CDN or a path prefix.
// NB: text from player/status goes into the page through textContent only, never innerHTML.
(() => {
  'use strict';

  const MASTER = 'master.m3u8';
  const STATUS = 'player/status';
  const WHEP = 'whep/';
  // Seconds to wait for ICE gathering: host candidates only, so it is quick.
  const GATHER_MS = 2000;
  const POLL_MS = 2000;
  const RETRY_MS = 3000;

  const $ = (id) => document.getElementById(id);
  const root = $('player');
  const video = $('video');
  const picker = $('rendition');
  const stateBox = $('state');
  const modePicker = $('mode');
  // The renditions the worker offers to WebRTC viewers (the profile's `webrtc` rungs).
  const whepNames = (root.dataset.whep || '').split(' ').filter(Boolean);
  const whepOffered = whepNames.length > 0 && 'RTCPeerConnection' in window;

  // What the page did, for people debugging in the console (and for the browser tests).
  const debug = (window.kubecastPlayer = {
    engine: null, hls: null, switches: [], status: null, whep: null,
  });

  let hls = null;
  let retryTimer = null;
  let statusDoc = null;
  let playingLevel = -1;
  // WebRTC playback: { pc, location, rendition } while a WHEP session is up.
  let whep = null;
  let mode = whepOffered && new URLSearchParams(window.location.search).get('mode') === 'whep'
    ? 'whep' : 'hls';

  // ---- formatting -------------------------------------------------------------

  const dash = '—';
  const num = (v) => typeof v === 'number' && Number.isFinite(v);

  function kbps(v) {
    if (!num(v)) return dash;
    return v >= 1000 ? `${(v / 1000).toFixed(2)} Mb/s` : `${Math.round(v)} kb/s`;
  }

  function size(w, h) {
    return num(w) && num(h) ? `${w}×${h}` : dash;
  }

  function setText(id, text) {
    const el = $(id);
    const value = text === undefined || text === null || text === '' ? dash : String(text);
    if (el.textContent !== value) el.textContent = value;
  }

  function announce(text) {
    const box = $('announce');
    box.textContent = '';
    // NB: a new text node after clearing makes screen readers speak a repeated message.
    window.setTimeout(() => { box.textContent = text; }, 50);
  }

  // What stops the preview, if anything; shown over the video until it plays.
  let problem = '';

  function notice(text) {
    problem = text;
    updateNotice();
  }

  function updateNotice() {
    const box = $('notice');
    const state = statusDoc && statusDoc.state;
    let text = problem;
    if (text && state && state !== 'live' && state !== 'reconnecting' && debug.engine) {
      text = 'No live stream yet; playback starts when a publisher connects.';
    }
    box.hidden = !text;
    if (box.textContent !== text) box.textContent = text;
  }

  // A publisher's URL is rtmp://host:port/app/<key>: keep only up to the app, so a
  // key that slipped into a configured URL is never shown.
  function withoutKey(url) {
    // NB: a regex, not new URL(): browsers disagree on hosts of non-special schemes.
    const m = /^([a-z][a-z0-9+.-]*:\/\/)(?:[^@/?#]*@)?([^/?#]*)([^?#]*)/i.exec(url || '');
    if (!m) return '';
    const [, scheme, host, path] = m;
    if (/^(rtmps?|srt):/i.test(scheme)) {
      const app = path.split('/').filter(Boolean)[0];
      return `${scheme}${host}${app ? `/${app}` : ''}`;
    }
    return `${scheme}${host}${path}`;
  }

  // ---- state and figures from player/status--------------------------------------

  const STATES = {
    live: 'Live',
    idle: 'Idle · waiting for a publisher',
    reconnecting: 'Reconnecting · publisher dropped',
    error: 'Error',
    unreachable: 'Origin unreachable',
  };

  function setState(state, detail) {
    const label = (STATES[state] || state) + (detail ? `: ${detail}` : '');
    // NB: only touch the live region on a change, so screen readers are not flooded.
    if (stateBox.dataset.state !== state || stateBox.textContent !== label) {
      stateBox.dataset.state = state;
      stateBox.textContent = label;
    }
  }

  // The worker writes camelCase (the LiveStream status names); snake_case is accepted too.
  function pick(obj, ...names) {
    for (const name of names) {
      if (obj && obj[name] !== undefined && obj[name] !== null) return obj[name];
    }
    return undefined;
  }

  // Where publishers push. A configured URL (from the operator) wins; the worker's own
  // listen address is shown with the page's host in place of a wildcard.
  function ingestUrl(doc) {
    const configured = withoutKey(root.dataset.ingestUrl);
    if (configured) return configured;
    const ingest = doc.ingest && typeof doc.ingest === 'object' ? doc.ingest : {};
    const url = withoutKey(pick(ingest, 'url') || pick(doc, 'ingestUrl', 'ingest_url'));
    return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)(0\.0\.0\.0|\[::\]|)(?=[:/]|$)/i,
      (_m, scheme) => `${scheme}${window.location.hostname}`);
  }

  function renderStatus(doc) {
    const previous = statusDoc;
    statusDoc = doc;
    debug.status = doc;
    const state = typeof doc.state === 'string' ? doc.state : 'unknown';
    // NB: no error text: the worker's errors are on its admin port, not for viewers.
    setState(state, '');
    if (doc.stream) {
      setText('title', doc.stream);
      document.title = `${doc.stream} · kubecast preview`;
    }

    const input = doc.input || {};
    const fps = pick(input, 'fps');
    setText('input-video', pick(input, 'videoCodec', 'video_codec'));
    setText('input-audio', pick(input, 'audioCodec', 'audio_codec'));
    setText('input-resolution', size(input.width, input.height));
    setText('input-fps', num(fps) ? `${Math.round(fps * 100) / 100} fps` : dash);
    setText('input-bitrate', kbps(pick(input, 'bitrateKbps', 'bitrate_kbps')));

    const renditions = Array.isArray(doc.renditions) ? doc.renditions : [];
    const rates = renditions.filter((r) => !dropped(r)).map(renditionKbps).filter(num);
    setText('output-bitrate', rates.length ? kbps(rates.reduce((a, b) => a + b, 0)) : dash);
    const droppedFrames = pick(doc, 'droppedFrames', 'dropped_frames');
    setText('dropped-frames', num(droppedFrames) ? String(droppedFrames) : dash);
    const speed = pick(doc, 'encodeSpeed', 'speed');
    setText('speed', num(speed) ? `${speed.toFixed(2)}×` : dash);
    renderRenditions(renditions);
    if (mode === 'whep') fillWhepPicker(renditions);
    updateNotice();

    const ingest = doc.ingest && typeof doc.ingest === 'object' ? doc.ingest : {};
    // The operator's URL is the ingest Service's in-cluster name; from outside,
    // publishers use the LiveStream's status.ingestUrl, which only the operator knows.
    $('ingest-label').textContent = ingest.mode === 'pull' ? 'Source URL (pulled)'
      : withoutKey(root.dataset.ingestUrl) ? 'Ingest URL (in the cluster; from outside: status.ingestUrl)'
        : 'Ingest URL';
    setUrl('ingest-url', ingestUrl(doc), 'not known to this origin');
    const secret = pick(doc, 'streamKeySecret', 'stream_key_secret') || root.dataset.keySecret;
    setText('key-hint', ingest.mode === 'pull' ? 'The worker pulls this source.' : keyHint(secret));

    // The worker's still of the stream is the poster until (and whenever) video is not
    // playing; refreshed on each status poll it is a few seconds old at most.
    const thumbnail = pick(doc, 'thumbnailUrl', 'thumbnail_url');
    if (thumbnail && (video.paused || !video.currentTime)) {
      video.poster = `${thumbnail.replace(/^\//, '')}?t=${Date.now()}`;
    }

    // The publisher came (back): start again now if an earlier attempt gave up or ended.
    const wasLive = previous && previous.state === 'live';
    const idle = mode === 'whep' ? !whep : !hls && !video.src;
    if (state === 'live' && !wasLive && (idle || video.ended || problem)) {
      startPlayback();
    }
  }

  function keyHint(secret) {
    return secret
      ? `Stream key: in Secret ${secret} (never shown here).`
      : 'Stream key: kept in a Secret, never shown here.';
  }

  const dropped = (r) => String(r.state || '').toLowerCase() === 'dropped';
  const renditionKbps = (r) => pick(r, 'bitrateKbps', 'bitrate_kbps');

  function renderRenditions(renditions) {
    const body = $('renditions');
    const rows = renditions.map((r) => {
      const tr = document.createElement('tr');
      tr.dataset.state = dropped(r) ? 'dropped' : 'active';
      tr.dataset.size = `${r.width}x${r.height}`;
      const cells = [
        r.name || dash,
        size(r.width, r.height),
        kbps(renditionKbps(r)),
        dropped(r) ? `dropped${r.reason ? ` (${r.reason})` : ''}` : 'active',
      ];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.appendChild(td);
      }
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 4;
      td.textContent = dash;
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    markCurrentRendition();
  }

  async function poll() {
    try {
      const response = await fetch(STATUS, {
        cache: 'no-store',
        headers: { Accept: 'application/json' },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      renderStatus(await response.json());
    } catch (error) {
      setState('unreachable', '');
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  // ---- addresses --------------------------------------------------------------

  function setUrl(id, url, missing) {
    const input = $(id);
    const button = document.querySelector(`[data-copy="${id}"]`);
    const value = url || '';
    if (input.value !== value) input.value = value;
    input.placeholder = url ? '' : missing;
    button.disabled = !url;
  }

  async function copy(button) {
    const input = $(button.dataset.copy);
    const what = button.getAttribute('aria-label').replace(/^Copy /, '');
    let ok = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(input.value);
        ok = true;
      } catch (_) { /* fall through to the selection */ }
    }
    if (!ok) {
      // Plain http (not localhost) has no clipboard API: select the text instead.
      input.focus();
      input.select();
      try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
    }
    announce(ok ? `Copied the ${what}.` : `Selected the ${what}; press Ctrl+C or ⌘C to copy.`);
  }

  // ---- playback ---------------------------------------------------------------

  function levelLabel(level) {
    const named = level.name && !/^\d+$/.test(level.name) ? level.name : null;
    const match = ((statusDoc && statusDoc.renditions) || []).find(
      (r) => r.width === level.width && r.height === level.height);
    const name = named || (match && match.name) || (level.height ? `${level.height}p` : 'level');
    const bits = level.bitrate ? ` · ${kbps(level.bitrate / 1000)}` : '';
    return `${name} (${size(level.width, level.height)}${bits})`;
  }

  function fillPicker(levels) {
    const chosen = picker.value;
    const options = [new Option('Auto', '-1')];
    levels.forEach((level, index) => options.push(new Option(levelLabel(level), String(index))));
    picker.replaceChildren(...options);
    picker.value = options.some((o) => o.value === chosen) ? chosen : '-1';
    picker.disabled = false;
  }

  function showPlaying(index) {
    playingLevel = index;
    const level = hls && hls.levels[index];
    const mode = hls && hls.autoLevelEnabled ? 'Auto' : 'fixed';
    setText('playing-level', level ? `Playing: ${levelLabel(level)}, ${mode}` : 'Playing: —');
    markCurrentRendition();
  }

  function markCurrentRendition() {
    const level = hls && hls.levels[playingLevel];
    const current = level ? `${level.width}x${level.height}`
      : whep && video.videoWidth ? `${video.videoWidth}x${video.videoHeight}` : null;
    for (const tr of $('renditions').rows) {
      tr.classList.toggle('current', tr.dataset.size === current);
    }
  }

  function destroyHls() {
    if (hls) hls.destroy();
    hls = null;
    debug.hls = null;
  }

  function retrySoon() {
    window.clearTimeout(retryTimer);
    retryTimer = window.setTimeout(startPlayback, RETRY_MS);
  }

  function attachHls() {
    destroyHls();
    hls = window.kubecastHls();  // hls-live.js: how close to the live edge it plays
    debug.hls = hls;
    debug.engine = 'hls.js';
    const Events = window.Hls.Events;
    hls.on(Events.MANIFEST_PARSED, (_event, data) => {
      notice('');
      fillPicker(data.levels);
      if (picker.value !== '-1') hls.currentLevel = Number(picker.value);
      video.play().catch(() => notice('Press play to start the preview.'));
    });
    hls.on(Events.LEVEL_SWITCHED, (_event, data) => {
      debug.switches.push(data.level);
      showPlaying(data.level);
    });
    hls.on(Events.ERROR, (_event, data) => {
      if (!data.fatal) return;
      if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
        return;
      }
      // Usually the stream is not live (yet): no playlist to load. Try again shortly.
      notice(`Playback stopped (${data.details}); retrying…`);
      destroyHls();
      retrySoon();
    });
    hls.loadSource(MASTER);
    hls.attachMedia(video);
  }

  // ---- WebRTC (WHEP) ------------------------------------------------------------

  // The renditions a WHEP viewer may ask for: the offered ones that run (the status lists
  // them highest first); "Auto" is the highest, since WebRTC has no adaptive switching here.
  function whepCandidates(renditions) {
    return renditions.filter((r) => !dropped(r) && whepNames.includes(r.name));
  }

  function fillWhepPicker(renditions) {
    const names = whepCandidates(renditions).map((r) => r.name);
    const chosen = picker.value;
    const options = [new Option('Auto', '-1'), ...names.map((n) => new Option(n, n))];
    if ([...picker.options].map((o) => o.value).join() === options.map((o) => o.value).join()) {
      return;
    }
    picker.replaceChildren(...options);
    picker.value = options.some((o) => o.value === chosen) ? chosen : '-1';
    picker.disabled = false;
  }

  function whepRendition() {
    if (picker.value !== '-1' && mode === 'whep') return picker.value;
    const first = whepCandidates((statusDoc && statusDoc.renditions) || [])[0];
    return first ? first.name : null;
  }

  function gathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') { resolve(); return; }
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') resolve();
      });
      window.setTimeout(resolve, GATHER_MS);  // send what was gathered so far
    });
  }

  function closeWhep() {
    const session = whep;
    whep = null;
    debug.whep = null;
    if (!session) return;
    if (!session.location) {
      session.pc.close();
      return;
    }
    // The DELETE first, the peer connection closed once it is answered: closing first
    // would end the session from the worker's side (DTLS close) and the DELETE find
    // nothing. keepalive: it still goes out when the page itself is being closed.
    const close = () => session.pc.close();
    fetch(session.location, { method: 'DELETE', keepalive: true }).then(close, close);
  }

  async function attachWhep() {
    destroyHls();
    closeWhep();
    video.removeAttribute('src');
    debug.engine = 'whep';
    const rendition = whepRendition();
    if (!rendition) {
      notice('No live stream yet; playback starts when a publisher connects.');
      return;  // the next status poll that sees Live starts again
    }
    const pc = new RTCPeerConnection({ iceServers: [] });
    const session = { pc, location: null, rendition };
    whep = session;
    debug.whep = session;
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const stream = new MediaStream();
    pc.addEventListener('track', (event) => stream.addTrack(event.track));
    video.srcObject = stream;
    pc.addEventListener('connectionstatechange', () => {
      if (whep !== session || pc.connectionState !== 'failed') return;
      notice('The WebRTC connection failed; retrying…');
      closeWhep();
      retrySoon();
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const url = `${WHEP}${encodeURIComponent(rendition)}`;
      const response = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/sdp' },
        body: pc.localDescription.sdp,
      });
      if (whep !== session) return;  // replaced (or closed) while the offer was out
      if (response.status !== 201) {
        throw new Error(`the worker answered HTTP ${response.status}`);
      }
      session.location = new URL(response.headers.get('Location'), response.url).href;
      await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    } catch (error) {
      if (whep !== session) return;
      notice(`WebRTC playback stopped (${error.message}); retrying…`);
      closeWhep();
      retrySoon();
      return;
    }
    setText('playing-level', `Playing: ${rendition}, WebRTC`);
    video.play().catch(() => notice('Press play to start the preview.'));
  }

  function startPlayback() {
    window.clearTimeout(retryTimer);
    if (mode === 'whep') {
      attachWhep();
      return;
    }
    closeWhep();
    video.srcObject = null;
    if (window.Hls && window.Hls.isSupported()) {
      attachHls();
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      debug.engine = 'native';
      video.src = MASTER;
      picker.disabled = true;
      setText('playing-level', 'Playing: the browser picks the rendition');
      video.play().catch(() => notice('Press play to start the preview.'));
    } else if (!window.Hls) {
      notice('The player script (hls.js) is missing on this origin; the master playlist still '
        + 'plays in VLC, ffplay or Safari.');
    } else {
      notice('This browser cannot play HLS; open the playback URL in VLC, ffplay or Safari.');
    }
  }

  picker.addEventListener('change', () => {
    if (mode === 'whep') {
      attachWhep();  // a rendition is a WHEP session of its own: offer again
      announce(`Switching to ${picker.selectedOptions[0].text}.`);
      return;
    }
    if (!hls) return;
    // NB: currentLevel switches now (flushing the buffer); -1 gives the choice back to ABR.
    hls.currentLevel = Number(picker.value);
    showPlaying(playingLevel);  // Auto/fixed changed even when the level does not
    announce(picker.value === '-1'
      ? 'Automatic rendition.' : `Switching to ${picker.selectedOptions[0].text}.`);
  });

  for (const button of document.querySelectorAll('[data-copy]')) {
    button.addEventListener('click', () => copy(button));
  }
  modePicker.addEventListener('change', () => {
    mode = modePicker.value;
    picker.value = '-1';
    if (mode === 'whep' && statusDoc) fillWhepPicker(statusDoc.renditions || []);
    startPlayback();
    announce(mode === 'whep' ? 'WebRTC playback.' : 'HLS playback.');
  });
  window.addEventListener('pagehide', closeWhep);
  video.addEventListener('resize', markCurrentRendition);
  video.addEventListener('playing', () => notice(''));
  video.addEventListener('error', () => {
    if (debug.engine !== 'native') return;  // hls.js reports its own errors
    // Native HLS gives up on a missing playlist (stream not live yet): load it again later.
    notice('Playback stopped; retrying…');
    video.removeAttribute('src');
    video.load();
    retrySoon();
  });

  $('mode-field').hidden = !whepOffered;
  modePicker.value = mode;
  setUrl('playback-url', new URL(MASTER, document.baseURI).href, '');
  setUrl('ingest-url', withoutKey(root.dataset.ingestUrl), 'not known to this origin');
  setText('key-hint', keyHint(root.dataset.keySecret));
  startPlayback();
  poll();
})();
