// How kubecast makes its hls.js for a live stream: the preview page (player.js) and the
// latency bench (bench/clock_reader.html) both call window.kubecastHls(), so what the
// bench measures is what a viewer of the page gets.
//
// Where hls.js sits behind the live edge:
// - an LL-HLS playlist carries EXT-X-SERVER-CONTROL PART-HOLD-BACK, which hls.js honours
//   in lowLatencyMode (about three parts behind);
// - a plain playlist carries no HOLD-BACK, and hls.js then stays liveSyncDurationCount (3)
//   target durations behind: 6 s of hold-back with 2 s segments, most of a viewer's delay.
//   A HOLD-BACK of our own cannot shorten that: the HLS spec requires it to be at least
//   3 target durations. So a plain playlist is played PLAIN_HOLD_BACK target durations
//   behind its edge: a segment is published whole, every target duration, so the buffer
//   then runs down to half a segment before the next one arrives, which is the margin for
//   the playlist reload and the download. A stall makes hls.js add liveSyncOnStallIncrease
//   (1 s, up to one target duration) to the hold-back, so a slow network finds its own.
// lowLatencyMode also lets hls.js play up to MAX_CATCH_UP x fast while it is behind its
// target (only while more than 1 s is buffered), so a session ends up at the target
// wherever in a segment it started, and catches up after a stall.
(() => {
  'use strict';

  const PLAIN_HOLD_BACK = 1.5;  // target durations
  const MAX_CATCH_UP = 1.25;

  window.kubecastHls = () => {
    const Hls = window.Hls;
    const hls = new Hls({
      backBufferLength: 30,
      liveDurationInfinity: true,
      lowLatencyMode: true,
      maxLiveSyncPlaybackRate: MAX_CATCH_UP,
    });
    let placed = false;
    // NB: LEVEL_UPDATED of the first playlist comes before hls.js picks the fragment to
    // start from (at liveSyncPosition), so the first fragment is already chosen with it.
    hls.on(Hls.Events.LEVEL_UPDATED, (_event, { details }) => {
      if (placed || !details.live) return;
      placed = true;
      if (!details.partTarget && !details.holdBack) {
        hls.targetLatency = PLAIN_HOLD_BACK * details.targetduration;
      }
    });
    return hls;
  };
})();
