"""The labeling page's own script and style, given to Gradio's ``launch(head=..., css=...)``.

The script is the page's side of "label only what is on screen" (see :mod:`labeling_app.handlers`):
it hands an answer the token of the item the tab shows, and only while that item is visible.
"""

# The page's side of "label only what is on screen".  labelingShown(task) is the token of the
# item the task's tab shows, or '' unless its prompt and every one of its images (the files the
# prompt names, not the last item's still on screen) are rendered, loaded, visible and not
# covered (at the centre of their visible part).  The token is read when an answer button is
# clicked, in the capture phase (before Gradio's own handler puts its loading overlay on the
# outputs), and the button's `js` sends it with the answer.  The keyboard shortcuts
# of the binary task (G good, B bad, S skip, U undo) do nothing without it, nor while typing in a
# text box, with a modifier key held, or when the binary tab is hidden.  Images smaller than their
# box are drawn with hard pixel edges (the 64 px renders), larger ones smoothly.
# While an item's images load, the page says so (the note `#<task>-loading`, which says what to do
# instead when an image cannot be loaded) and hides the images on screen, so an old image never sits
# next to a new prompt.  The classes for that go on those elements themselves: Gradio scopes the
# app's CSS to its own container, so rules keyed on the body's classes would never match.
HEAD = """
<script>
(function () {
  function loaded(img) {
    if (!img || !img.complete || img.naturalWidth === 0 || img.offsetParent === null) return false;
    if (img.checkVisibility && !img.checkVisibility({opacityProperty: true, visibilityProperty: true})) return false;
    var r = img.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return false;
    var x0 = Math.max(r.left, 0), x1 = Math.min(r.right, window.innerWidth);
    var y0 = Math.max(r.top, 0), y1 = Math.min(r.bottom, window.innerHeight);
    if (x1 - x0 < 1 || y1 - y0 < 1) return true;  // scrolled out of view: seen, not covered
    return document.elementFromPoint((x0 + x1) / 2, (y0 + y1) / 2) === img;
  }
  function fileOf(img) {
    try { return decodeURIComponent((img.getAttribute('src') || '').split('?')[0].split('/').pop()); }
    catch (x) { return ''; }
  }
  // The task's item as the prompt names it, and the image elements that show it now.
  function item(task) {
    var p = document.querySelector('#' + task + '-prompt [data-token]');
    if (!p) return null;
    var n = parseInt(p.getAttribute('data-images') || '0', 10);
    var files = (p.getAttribute('data-files') || '').split('/');
    var imgs = [];
    for (var i = 0; i < n; i++)
      imgs.push(document.querySelector(task === 'binary' ? '#binary-image img' : '#rank-image-' + i + ' img'));
    return {prompt: p, files: files, imgs: imgs};
  }
  function ownImage(it, i) { return it.imgs[i] && fileOf(it.imgs[i]) === it.files[i]; }
  window.labelingShown = function (task) {
    var it = item(task);
    if (!it || it.prompt.offsetParent === null || !it.imgs.length) return '';
    for (var i = 0; i < it.imgs.length; i++) if (!ownImage(it, i) || !loaded(it.imgs[i])) return '';
    return it.prompt.getAttribute('data-token');
  };
  // 'loading' while an image of the item is not on the page yet, 'failed' when one cannot load.
  function imageState(task) {
    var it = item(task), state = '';
    if (!it) return '';
    for (var i = 0; i < it.imgs.length; i++) {
      if (!ownImage(it, i) || !it.imgs[i].complete) return 'loading';
      if (it.imgs[i].naturalWidth === 0) state = 'failed';
    }
    return state;
  }
  var frame = 0;
  function showState() {
    frame = 0;
    ['binary', 'ranking'].forEach(function (task) {
      var state = imageState(task), note = document.getElementById(task + '-loading');
      if (note) {
        note.classList.toggle('labeling-on', state !== '');
        note.classList.toggle('labeling-failed', state === 'failed');
      }
      var imgs = document.querySelectorAll(task === 'binary' ? '#binary-image img' : '[id^=rank-image-] img');
      imgs.forEach(function (img) { img.classList.toggle('labeling-stale', state !== ''); });
    });
  }
  function later() { if (!frame) frame = requestAnimationFrame(showState); }
  new MutationObserver(later).observe(document.documentElement, {subtree: true, childList: true, attributes: true,
                                                                  attributeFilter: ['src', 'data-token']});
  document.addEventListener('load', later, true);
  document.addEventListener('error', later, true);
  var seen = {binary: '', ranking: ''};
  var answers = {'btn-good': 'binary', 'btn-bad': 'binary', 'btn-skip': 'binary', 'btn-rank': 'ranking'};
  document.addEventListener('click', function (e) {
    for (var id in answers) {
      var b = document.getElementById(id);
      if (b && e.target instanceof Node && b.contains(e.target)) seen[answers[id]] = window.labelingShown(answers[id]);
    }
  }, true);
  window.labelingSeen = function (task) { var t = seen[task]; seen[task] = ''; return t; };
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    var t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return;
    var ids = {g: 'btn-good', b: 'btn-bad', s: 'btn-skip', u: 'btn-undo-binary'};
    var id = ids[(e.key || '').toLowerCase()];
    if (!id) return;
    var el = document.getElementById(id);
    if (!el || el.offsetParent === null || !window.labelingShown('binary')) return;
    var btn = el.tagName === 'BUTTON' ? el : el.querySelector('button');
    if (btn && !btn.disabled) { e.preventDefault(); btn.click(); }
  });
  document.addEventListener('load', function (e) {
    var img = e.target;
    if (img.tagName !== 'IMG' || !img.closest('.framed')) return;
    var r = img.getBoundingClientRect();
    img.classList.toggle('upscaled', img.naturalWidth < r.width || img.naturalHeight < r.height);
  }, true);
})();
</script>
"""

# Send the token taken at the click with an answer (the Python handlers' `seen` argument).
SEEN_BINARY_JS = "(reason, seen) => [reason, window.labelingSeen('binary')]"
SEEN_RANKING_JS = "(seen, ...rest) => [window.labelingSeen('ranking'), ...rest]"

CSS = """
.prompt-text { font-size: 1.5rem; font-weight: 600; padding: 0.5rem 0; white-space: pre-wrap; }
/* A long prompt scrolls inside its box (about 5 lines), so the answer buttons stay in view. */
.prompt-text { max-height: 10rem; overflow-y: auto; overflow-wrap: anywhere; }
.status-text { min-height: 1.5rem; }
.status-text .warn { color: #b45309; font-weight: 600; }
.progress-text { font-size: 0.95rem; }
/* Any image size fits its box, scaled with its aspect kept; the box has a frame and a grey
   ground, so a white image still shows its edges on the white page. */
.framed img { width: 100%; height: 100%; object-fit: contain; box-sizing: border-box;
              border: 2px solid #6b7280; background: #d1d5db; }
.framed img.upscaled { image-rendering: pixelated; }
/* While an item's images load (labeling_app.page's script), the last item's images are hidden and
   the note says why the keys wait; if an image cannot be loaded, the note says what to do. */
.labeling-stale { visibility: hidden !important; }
#binary-loading:not(.labeling-on), #ranking-loading:not(.labeling-on) { display: none !important; }
.labeling-note { font-weight: 600; color: #4338ca; }
.labeling-note .note-failed { display: none; color: #b91c1c; }
.labeling-failed .note-loading { display: none; }
.labeling-failed .note-failed { display: inline; }
.admin-chart img { max-width: 100%; height: auto; border: 1px solid #d1d5db; }
kbd { border: 1px solid #999; border-radius: 3px; padding: 0 4px; font-size: 0.85em; }
"""

# The note under a task's images (shown while they load, or when one fails: see HEAD and CSS).
LOADING_NOTE = ('<div class="labeling-note" role="status"><span class="note-loading">Loading the next {what}… '
                'the keys wait until it is shown.</span><span class="note-failed">The {what} could not be '
                'loaded: reload the page (your answers are saved).</span></div>')
