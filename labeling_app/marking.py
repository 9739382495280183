"""Marking where an image is wrong on the *Does it match?* tab: the page's side of :mod:`data.marks`.

The prompt output of a binary item (:func:`labeling_app.views.prompt_html`) carries the marking mode
(``data-marks``) and, unless marking is off, one chip per word of :func:`data.marks.prompt_words`.
The page's script (:data:`MARKS_HEAD`) keeps the marks of the item on screen: a click on the image
adds a point (a dot; a click on a dot removes it), a click on a chip or the number key 1-9 toggles
that word.  Marks belong to the item's token: a new item (or the same one given back by an undo)
starts with none, a refused answer keeps them.  They live only in the page until an answer sends
them: the count under the prompt says they are not saved yet, and leaving or reloading the page
with marks on screen asks first (the browser's own "leave site?" prompt).  Every answer button sends them
(:data:`BINARY_ANSWER_JS`) as JSON ``{"points": [[x, y], ...], "words": [i, ...]}``, x and y
fractions of the image (0 at its left and top edge), so the server refuses marks on a good or skip
answer instead of dropping them silently.
"""

from __future__ import annotations

import html
import json

from core.errors import UserError
from data.marks import prompt_words

# Sends the token taken at the click (labeling_app.page) and the marks with an answer (the
# handlers' `seen` and `marks` arguments).
BINARY_ANSWER_JS = ("(reason, seen, marks) => [reason, window.labelingSeen('binary'), "
                    "window.labelingMarks ? window.labelingMarks() : '']")

# Points are kept as fractions of the image's own pixels: the image is drawn with object-fit:
# contain inside a bordered box, so the drawn picture is the box's content area less the
# letterbox bars; a click on a bar or the border is not on the image and adds nothing.
MARKS_HEAD = """
<script>
(function () {
  var state = {token: '', points: [], words: []};
  var DOT_R = 8;  // px: a dot's radius on screen (MARKS_CSS), and how near a click removes it
  function prompt() { return document.querySelector('#binary-prompt [data-token]'); }
  function mode() { var p = prompt(); return p ? (p.getAttribute('data-marks') || 'off') : 'off'; }
  function image() { return document.querySelector('#binary-image img'); }
  function typing(t) {
    return t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable);
  }
  // The drawn picture of the image, in client pixels: {left, top, width, height}.
  function picture(img) {
    var r = img.getBoundingClientRect();
    var cw = img.clientWidth, ch = img.clientHeight;
    var left = r.left + img.clientLeft, top = r.top + img.clientTop;
    var s = Math.min(cw / img.naturalWidth, ch / img.naturalHeight);
    var w = img.naturalWidth * s, h = img.naturalHeight * s;
    return {left: left + (cw - w) / 2, top: top + (ch - h) / 2, width: w, height: h};
  }
  function current() {
    var p = prompt(), token = p ? p.getAttribute('data-token') : '';
    if (token !== state.token) state = {token: token, points: [], words: []};
    return state;
  }
  function unsaved() { var st = current(); return mode() !== 'off' && (st.points.length + st.words.length) > 0; }
  function draw() {
    var st = current(), box = document.getElementById('binary-image');
    if (!box) return;
    var layer = box.querySelector('.mark-layer');
    if (!layer) { layer = document.createElement('div'); layer.className = 'mark-layer'; box.appendChild(layer); }
    var img = image(), html = '';
    if (img && mode() !== 'off' && img.naturalWidth && window.labelingShown('binary')) {
      var pic = picture(img), b = box.getBoundingClientRect();
      st.points.forEach(function (p, i) {
        var x = pic.left - b.left + p[0] * pic.width, y = pic.top - b.top + p[1] * pic.height;
        html += '<div class="mark-dot" data-point="' + i + '" style="left:' +
                x.toFixed(1) + 'px;top:' + y.toFixed(1) + 'px"></div>';
      });
    }
    if (layer.innerHTML !== html) layer.innerHTML = html;
    document.querySelectorAll('#binary-prompt .word-chip').forEach(function (c) {
      var on = st.words.indexOf(parseInt(c.getAttribute('data-word'), 10)) >= 0;
      if (c.classList.contains('marked') !== on) c.classList.toggle('marked', on);
      c.setAttribute('aria-pressed', on ? 'true' : 'false');
    });
    var count = document.querySelector('#binary-prompt .mark-count');
    var text = st.points.length + ' point(s), ' + st.words.length + ' word(s) marked' +
               (unsaved() ? ' (not saved until you answer bad; a reload loses them)' : '');
    if (count && count.textContent !== text) count.textContent = text;
  }
  function toggleWord(i) {
    var st = current(), chip = document.querySelector('#binary-prompt .word-chip[data-word="' + i + '"]');
    if (!chip || mode() === 'off') return false;
    var k = st.words.indexOf(i);
    if (k >= 0) st.words.splice(k, 1); else st.words.push(i);
    draw();
    return true;
  }
  window.labelingMarks = function () {
    var st = current();
    if (mode() === 'off') return '';
    return JSON.stringify({points: st.points, words: st.words.slice().sort(function (a, b) { return a - b; })});
  };
  // Dots let clicks through (pointer-events: none, so the page's "is the image covered" check
  // still sees the image): a click within a dot's radius of a point removes it.
  document.addEventListener('click', function (e) {
    var t = e.target;
    if (!(t instanceof Element) || mode() === 'off') return;
    var chip = t.closest('#binary-prompt .word-chip');
    if (chip) { toggleWord(parseInt(chip.getAttribute('data-word'), 10)); return; }
    if (t !== image() || !window.labelingShown('binary')) return;
    var st = current(), pic = picture(t);
    var x = (e.clientX - pic.left) / pic.width, y = (e.clientY - pic.top) / pic.height;
    var hit = -1;
    st.points.forEach(function (p, i) {
      var dx = (p[0] - x) * pic.width, dy = (p[1] - y) * pic.height;
      if (dx * dx + dy * dy <= DOT_R * DOT_R) hit = i;
    });
    if (hit >= 0) st.points.splice(hit, 1);
    else if (x >= 0 && x <= 1 && y >= 0 && y <= 1) st.points.push([Math.round(x * 1e4) / 1e4, Math.round(y * 1e4) / 1e4]);
    else return;  // a letterbox bar, not the image
    e.preventDefault(); e.stopPropagation(); draw();
  }, true);
  document.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || typing(e.target)) return;
    if (!/^[1-9]$/.test(e.key || '') || !window.labelingShown('binary')) return;
    var el = document.getElementById('btn-bad');
    if (!el || el.offsetParent === null) return;
    if (toggleWord(parseInt(e.key, 10) - 1)) e.preventDefault();
  });
  var frame = 0;
  function later() { if (!frame) frame = requestAnimationFrame(function () { frame = 0; draw(); }); }
  new MutationObserver(function (records) {
    for (var i = 0; i < records.length; i++) {
      var n = records[i].target;
      if (!(n instanceof Element && n.closest('.mark-layer'))) { later(); return; }
    }
  }).observe(document.documentElement, {subtree: true, childList: true, attributes: true,
                                        attributeFilter: ['src', 'data-token', 'class']});
  // A reload, a closed tab or a link away would drop marks not yet sent with an answer.
  window.addEventListener('beforeunload', function (e) {
    if (!unsaved()) return;
    e.preventDefault();
    e.returnValue = '';  // older browsers show the prompt only with a return value
  });
  document.addEventListener('load', later, true);
  window.addEventListener('resize', later);
  window.addEventListener('scroll', later, true);
})();
</script>
"""

MARKS_CSS = """
#binary-image { position: relative; }
#binary-image img { cursor: crosshair; }
.mark-layer, .mark-dot { pointer-events: none; }
.mark-layer { position: absolute; inset: 0; z-index: 5; }
.mark-dot { position: absolute; width: 16px; height: 16px; margin: -8px 0 0 -8px; border-radius: 50%;
            background: #dc2626; border: 2px solid #fff; box-shadow: 0 0 0 1px #000; box-sizing: border-box; }
.mark-words { display: flex; flex-wrap: wrap; gap: 0.3rem; padding: 0.2rem 0; max-height: 6rem; overflow-y: auto; }
.word-chip { border: 1px solid #9ca3af; border-radius: 999px; padding: 0.1rem 0.6rem; cursor: pointer;
             user-select: none; background: #f9fafb; }
.word-chip.marked { background: #fee2e2; border-color: #dc2626; color: #991b1b; text-decoration: line-through; }
.mark-hint { font-size: 0.85rem; color: #4b5563; }
"""


def word_chips_html(prompt: str, mode: str) -> str:
    """The chips under a binary item's prompt (none when marking is off): one per word, the
    first nine with their number key."""
    if mode == "off":
        return ""
    chips = "".join(
        f'<span class="word-chip" role="button" aria-pressed="false" data-word="{i}">'
        f'{f"<kbd>{i + 1}</kbd> " if i < 9 else ""}{html.escape(w, quote=True)}</span>'
        for i, w in enumerate(prompt_words(prompt)))
    need = "required" if mode == "required" else "optional"
    return (f'<div class="mark-words" aria-label="wrong words">{chips}</div>'
            f'<div class="mark-hint">If it is bad, mark where ({need}): click the image where it is wrong '
            '(click a dot to remove it) and the wrong words (keys 1-9), then answer bad. '
            '<span class="mark-count"></span></div>')


# The longest marks JSON read.  The page sends each point with 4 decimals, about 16 characters, so
# MAX_MARK_POINTS (labeling_app.answers) points and every word of a long prompt fit several times
# over; a longer string is refused before it is parsed, so its size never costs the server.
MAX_MARKS_CHARS = 16 * 1024


def parse_marks(text: str | None) -> tuple[list, list]:
    """The page's marks JSON (:data:`BINARY_ANSWER_JS`) as (points, words); '' or none: no marks.
    Values are checked by the answer path (:func:`data.marks.check_marks`); only the shape here.
    Anything else, a string over ``MAX_MARKS_CHARS`` or JSON nested too deep to parse included,
    is one refusal (a :class:`UserError`), so the page stays usable."""
    if not text:
        return [], []
    unreadable = UserError("the marks sent with the answer are not readable; nothing was saved.",
                           'send marks as {"points": [[x, y], ...], "words": [i, ...]}, or reload the page.')
    if not isinstance(text, str):
        raise unreadable
    if len(text) > MAX_MARKS_CHARS:
        raise UserError(f"the marks sent with the answer are {len(text):,} characters long, over the "
                        f"{MAX_MARKS_CHARS:,} an answer may carry; nothing was saved.",
                        "remove some points (click a dot to remove it), or reload the page.")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise unreadable from None
    if not isinstance(data, dict) or not isinstance(data.get("points", []), list) \
            or not isinstance(data.get("words", []), list):
        raise unreadable
    return data.get("points", []), data.get("words", [])
