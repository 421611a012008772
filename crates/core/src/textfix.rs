//! Passage text repair: a documented subset of Python ftfy's `fix_text`
//! (ftfy 6.x by Robyn Speer, Apache-2.0), which rank_llm applies to every
//! passage before it goes into a listwise prompt. Rewritten here from ftfy's
//! documented behaviour so prompts built in Rust match rank_llm's; no crate
//! implements ftfy.
//!
//! What [`fix_text`] does, per line (ftfy fixes text line by line), repeated
//! until the line stops changing:
//!
//! 1. HTML entities (`&amp;`, `&eacute;`, `&#x2019;`, the all-caps `&EACUTE;`
//!    ftfy also accepts) are decoded, only those ending in `;`. Like ftfy's
//!    `unescape_html="auto"`, this is switched off as soon as a line contains
//!    `<` (the text is probably real HTML), and stays off for the rest of the
//!    text. The named entities come from the `entities` crate (the WHATWG
//!    table Python's `html.entities.html5` also holds).
//! 2. Mojibake: UTF-8 that was decoded as Latin-1 or Windows-1252 (`Ã©` → `é`,
//!    `â€™` → `’`, MS MARCO's `â\u{80}\u{99}`). When the text looks like
//!    mojibake, it is re-encoded as Latin-1, else as (sloppy) Windows-1252,
//!    and decoded as UTF-8 if that succeeds; byte A0 turned into a space is
//!    put back (ftfy's `restore_byte_a0`), bytes lost to `?`/`�` become `�`
//!    (`replace_lossy_sequences`), CESU-8 and Java's `C0 80` are accepted.
//!    Mojibake embedded in otherwise good text is fixed run by run
//!    (`decode_inconsistent_utf8`); Latin-1 C1 controls become their
//!    Windows-1252 characters (`fix_c1_controls`).
//! 3. Latin ligatures (`ﬁ` → `fi`), fullwidth/halfwidth forms (`Ｌ` → `L`,
//!    U+3000 → space), curly quotes → straight (`uncurl_quotes`), line breaks
//!    (`\r\n`, `\r`, U+2028/2029/0085) → `\n`, ANSI terminal escapes removed,
//!    invisible control characters removed, NFC normalization.
//!
//! Knowingly not done (ftfy does them): mojibake through Cyrillic, Greek,
//! Central European, Turkish, Baltic, ISO-8859-2, MacRoman and CP437 code
//! pages (only Latin-1 and Windows-1252 are tried); UTF-16 surrogate repair
//! (a Rust `str` cannot hold surrogates). Whether text "looks like mojibake"
//! ([`looks_like_mojibake`]) is decided by a few rules fitted to ftfy's
//! verdicts on two-character sequences, not by ftfy's full badness regex, so
//! rare three-character cases can differ.
//!
//! Checked against ftfy 6.3.1 (`tests/data/prompt/gen_ftfy_cases.py`): of the
//! 15,946 distinct DL19/DL20 passages (BM25 and SPLADE top-100), ftfy changes
//! 3,608 and this module gives the same text for all 3,608 and leaves the
//! other 12,338 unchanged, as ftfy does; the committed table
//! `tests/data/prompt/ftfy_cases.jsonl` also holds hand-written hard strings.

use std::collections::HashMap;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

/// When to decode HTML entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlUnescape {
    /// ftfy's default: decode, unless a line contains `<` (then stop for the
    /// rest of the text).
    Auto,
    Always,
    Never,
}

/// Which fixes [`fix_text_with`] applies; the default is ftfy's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixOptions {
    pub unescape_html: HtmlUnescape,
    pub remove_terminal_escapes: bool,
    pub fix_encoding: bool,
    pub restore_byte_a0: bool,
    pub replace_lossy_sequences: bool,
    pub decode_inconsistent_utf8: bool,
    pub fix_c1_controls: bool,
    pub fix_latin_ligatures: bool,
    pub fix_character_width: bool,
    pub uncurl_quotes: bool,
    pub fix_line_breaks: bool,
    pub remove_control_chars: bool,
    /// NFC normalization at the end of each round.
    pub normalize_nfc: bool,
}

impl Default for FixOptions {
    fn default() -> Self {
        Self {
            unescape_html: HtmlUnescape::Auto,
            remove_terminal_escapes: true,
            fix_encoding: true,
            restore_byte_a0: true,
            replace_lossy_sequences: true,
            decode_inconsistent_utf8: true,
            fix_c1_controls: true,
            fix_latin_ligatures: true,
            fix_character_width: true,
            uncurl_quotes: true,
            fix_line_breaks: true,
            remove_control_chars: true,
            normalize_nfc: true,
        }
    }
}

/// ftfy's `fix_text` with default options (see the module docs for the subset).
pub fn fix_text(text: &str) -> String {
    fix_text_with(text, &FixOptions::default())
}

/// [`fix_text`] with chosen fixes.
pub fn fix_text_with(text: &str, options: &FixOptions) -> String {
    let mut opts = *options;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if opts.unescape_html == HtmlUnescape::Auto && segment.contains('<') {
            // Sticky, as in ftfy: once HTML is seen, later lines keep entities.
            opts.unescape_html = HtmlUnescape::Never;
        }
        out.push_str(&fix_segment(segment, &opts));
    }
    out
}

fn fix_segment(text: &str, opts: &FixOptions) -> String {
    let mut text = text.to_string();
    loop {
        let orig = text.clone();
        if opts.unescape_html != HtmlUnescape::Never {
            text = unescape_html(&text);
        }
        if opts.fix_encoding {
            text = fix_encoding_with(&text, opts);
        }
        if opts.fix_c1_controls {
            text = fix_c1_controls(&text);
        }
        if opts.fix_latin_ligatures {
            text = fix_latin_ligatures(&text);
        }
        if opts.fix_character_width {
            text = fix_character_width(&text);
        }
        if opts.uncurl_quotes {
            text = uncurl_quotes(&text);
        }
        if opts.fix_line_breaks {
            text = fix_line_breaks(&text);
        }
        if opts.remove_terminal_escapes {
            text = remove_terminal_escapes(&text);
        }
        if opts.remove_control_chars {
            text = remove_control_chars(&text);
        }
        if opts.normalize_nfc {
            text = text.nfc().collect();
        }
        if text == orig {
            return text;
        }
    }
}

// ---------------------------------------------------------------------------
// HTML entities

fn named_entities() -> &'static HashMap<&'static str, String> {
    static MAP: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map: HashMap<&'static str, String> = HashMap::new();
        for e in entities::ENTITIES.iter() {
            map.insert(e.entity, e.characters.to_string());
        }
        map
    })
}

/// All-caps spellings of lowercase entity names (`&EACUTE;` → `É`), accepted
/// when the capitalised name is not itself (or does not start with) an entity.
fn upper_entities() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let all = named_entities();
        let mut map = HashMap::new();
        for e in entities::ENTITIES.iter() {
            let name = e.entity;
            if !name.ends_with(';') || name != name.to_lowercase() {
                continue;
            }
            let upper = name.to_uppercase();
            // Python's html.unescape would decode `&NAME;` or a prefix of it
            // (two characters or more) when that is an entity: then the caps
            // spelling is not free.
            let body = &upper[1..];
            let taken = (2..=body.len()).rev().any(|k| {
                body.is_char_boundary(k) && all.contains_key(format!("&{}", &body[..k]).as_str())
            });
            if !taken {
                map.insert(upper, e.characters.to_uppercase());
            }
        }
        map
    })
}

/// Decodes one numeric character reference body (after `&#`, before `;`) the
/// way Python's `html.unescape` does; `None` leaves the reference as it is.
fn numeric_reference(body: &str) -> Option<String> {
    let (digits, radix) = match body.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (body, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Up to 24 digits: saturate instead of overflowing; anything past
    // U+10FFFF becomes U+FFFD anyway.
    let mut value: u64 = 0;
    for c in digits.chars() {
        value = value
            .saturating_mul(radix as u64)
            .saturating_add(c.to_digit(radix)? as u64);
    }
    let replaced = match value {
        0 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => Some(sloppy_cp1252_decode(value as u8)),
        0xD800..=0xDFFF => Some('\u{FFFD}'),
        v if v > 0x10FFFF => Some('\u{FFFD}'),
        _ => None,
    };
    if let Some(c) = replaced {
        return Some(c.to_string());
    }
    let invalid = matches!(value, 0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F | 0xFDD0..=0xFDEF)
        || (value & 0xFFFE) == 0xFFFE;
    if invalid {
        return Some(String::new());
    }
    char::from_u32(value as u32).map(|c| c.to_string())
}

/// Decodes HTML entities that end in `;` (ftfy's `unescape_html`): named
/// HTML5 entities, their all-caps spellings, and numeric references.
pub fn unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'&' {
            i += 1;
            continue;
        }
        // `&#?[0-9A-Za-z]{1,24};`
        let mut j = i + 1;
        if j < bytes.len() && bytes[j] == b'#' {
            j += 1;
        }
        let start = j;
        while j < bytes.len() && j - start < 24 && bytes[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if j == start || j >= bytes.len() || bytes[j] != b';' {
            i += 1;
            continue;
        }
        let entity = &text[i..=j];
        let replacement = if entity.starts_with("&#") {
            numeric_reference(&text[start..j])
        } else {
            named_entities()
                .get(entity)
                .or_else(|| upper_entities().get(entity))
                .cloned()
        };
        match replacement {
            Some(r) => {
                out.push_str(&text[copied..i]);
                out.push_str(&r);
                i = j + 1;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[copied..]);
    out
}

// ---------------------------------------------------------------------------
// Single-byte code pages (hand-written: the two 32-entry tables are all that
// differs from Latin-1, and ftfy's "sloppy" variant — undefined bytes pass
// through, byte 1A stands for U+FFFD — is not what encoding crates offer).

/// Windows-1252 bytes 0x80..=0x9F; `None` where the byte is undefined.
const CP1252_HIGH: [Option<char>; 32] = [
    Some('\u{20AC}'),
    None,
    Some('\u{201A}'),
    Some('\u{0192}'),
    Some('\u{201E}'),
    Some('\u{2026}'),
    Some('\u{2020}'),
    Some('\u{2021}'),
    Some('\u{02C6}'),
    Some('\u{2030}'),
    Some('\u{0160}'),
    Some('\u{2039}'),
    Some('\u{0152}'),
    None,
    Some('\u{017D}'),
    None,
    None,
    Some('\u{2018}'),
    Some('\u{2019}'),
    Some('\u{201C}'),
    Some('\u{201D}'),
    Some('\u{2022}'),
    Some('\u{2013}'),
    Some('\u{2014}'),
    Some('\u{02DC}'),
    Some('\u{2122}'),
    Some('\u{0161}'),
    Some('\u{203A}'),
    Some('\u{0153}'),
    None,
    Some('\u{017E}'),
    Some('\u{0178}'),
];

/// Windows-1252 with undefined bytes decoded as the C1 control of that value
/// (what browsers do).
fn sloppy_cp1252_decode(b: u8) -> char {
    match b {
        0x80..=0x9F => CP1252_HIGH[(b - 0x80) as usize].unwrap_or(b as char),
        _ => b as char,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charmap {
    Latin1,
    /// ftfy's sloppy-windows-1252: 1A ↔ U+FFFD, undefined bytes pass through.
    SloppyCp1252,
}

impl Charmap {
    fn encode_char(self, c: char) -> Option<u8> {
        let u = c as u32;
        match self {
            Charmap::Latin1 => (u <= 0xFF).then_some(u as u8),
            Charmap::SloppyCp1252 => match u {
                0x1A => None,
                0xFFFD => Some(0x1A),
                0..=0x7F | 0xA0..=0xFF => Some(u as u8),
                0x81 | 0x8D | 0x8F | 0x90 | 0x9D => Some(u as u8),
                _ => CP1252_HIGH
                    .iter()
                    .position(|&x| x == Some(c))
                    .map(|p| 0x80 + p as u8),
            },
        }
    }

    fn encode(self, text: &str) -> Option<Vec<u8>> {
        text.chars().map(|c| self.encode_char(c)).collect()
    }
}

/// The byte a character would have been in Latin-1 or Windows-1252.
fn western_byte(c: char) -> Option<u8> {
    Charmap::Latin1
        .encode_char(c)
        .or_else(|| Charmap::SloppyCp1252.encode_char(c).filter(|&b| b != 0x1A))
}

// ---------------------------------------------------------------------------
// Byte patterns (ftfy's restore_byte_a0 / replace_lossy_sequences), each a
// sequence of byte classes given as inclusive ranges.

type Class = &'static [(u8, u8)];

const CONT: Class = &[(0x80, 0xBF)];
const CONT_NOT_85_A0: Class = &[(0x80, 0x84), (0x86, 0x9F), (0xA1, 0xBF)];
const SPACE: Class = &[(0x20, 0x20)];

/// UTF-8 sequences with an A0 byte replaced by a space.
const ALTERED_UTF8: &[&[Class]] = &[
    &[
        &[
            (0xC2, 0xC3),
            (0xC5, 0xC5),
            (0xCE, 0xCE),
            (0xD0, 0xD0),
            (0xD9, 0xD9),
        ],
        SPACE,
    ],
    &[&[(0xE2, 0xE3)], SPACE, CONT_NOT_85_A0],
    &[&[(0xE0, 0xE3)], CONT_NOT_85_A0, SPACE],
    &[&[(0xF0, 0xF0)], SPACE, CONT, CONT],
    &[&[(0xF0, 0xF0)], CONT, SPACE, CONT],
    &[&[(0xF0, 0xF0)], CONT, CONT, SPACE],
];

const SUB: Class = &[(0x1A, 0x1A)];
const SUB_Q: Class = &[(0x1A, 0x1A), (b'?', b'?')];
const SUB_CONT: Class = &[(0x1A, 0x1A), (0x80, 0xBF)];
const SUB_Q_CONT: Class = &[(0x1A, 0x1A), (b'?', b'?'), (0x80, 0xBF)];
const LEAD3: Class = &[(0xE0, 0xEF)];
const LEAD4: Class = &[(0xF0, 0xF4)];
const ED: Class = &[(0xED, 0xED)];

/// UTF-8 sequences that lost bytes to `?` or to byte 1A (from U+FFFD).
const LOSSY_UTF8: &[&[Class]] = &[
    &[&[(0xC2, 0xDF)], SUB],
    &[&[(0xC2, 0xC3)], &[(b'?', b'?')]],
    &[ED, &[(0xA0, 0xAF)], SUB_Q, ED, &[(0xB0, 0xBF)], SUB_Q_CONT],
    &[ED, &[(0xA0, 0xAF)], SUB_Q_CONT, ED, &[(0xB0, 0xBF)], SUB_Q],
    &[LEAD3, SUB_Q, SUB_CONT],
    &[LEAD3, SUB_CONT, SUB_Q],
    &[LEAD4, SUB_Q, SUB_CONT, SUB_CONT],
    &[LEAD4, SUB_CONT, SUB_Q, SUB_CONT],
    &[LEAD4, SUB_CONT, SUB_CONT, SUB_Q],
    &[SUB],
];

fn in_class(b: u8, class: Class) -> bool {
    class.iter().any(|&(lo, hi)| (lo..=hi).contains(&b))
}

/// Length of the first alternative matching at `i` (regex alternation order).
fn match_at(bytes: &[u8], i: usize, alternatives: &[&[Class]]) -> Option<usize> {
    alternatives.iter().find_map(|pat| {
        let ok = pat.len() <= bytes.len() - i
            && pat
                .iter()
                .enumerate()
                .all(|(k, class)| in_class(bytes[i + k], class));
        ok.then_some(pat.len())
    })
}

/// Replaces every non-overlapping match, leftmost first.
fn replace_matches(
    bytes: &[u8],
    alternatives: &[&[Class]],
    f: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match match_at(bytes, i, alternatives) {
            Some(len) => {
                out.extend(f(&bytes[i..i + len]));
                i += len;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn has_match(bytes: &[u8], alternatives: &[&[Class]]) -> bool {
    (0..bytes.len()).any(|i| match_at(bytes, i, alternatives).is_some())
}

/// Puts back A0 bytes that became spaces inside UTF-8 sequences.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    // "Ã " before a word is "à " (C3 A0) whose A0 became a space, except
    // before the Portuguese words where "à" is followed by a real space.
    let mut first = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xC3 && bytes.get(i + 1) == Some(&b' ') {
            let rest = &bytes[i + 2..];
            let excluded = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|w| rest.starts_with(w));
            if !excluded {
                first.extend_from_slice(&[0xC3, 0xA0, b' ']);
                i += 2;
                continue;
            }
        }
        first.push(bytes[i]);
        i += 1;
    }
    replace_matches(&first, ALTERED_UTF8, |m| {
        m.iter()
            .map(|&b| if b == b' ' { 0xA0 } else { b })
            .collect()
    })
}

fn replace_lossy_sequences(bytes: &[u8]) -> Vec<u8> {
    replace_matches(bytes, LOSSY_UTF8, |_| "\u{FFFD}".as_bytes().to_vec())
}

/// UTF-8 plus CESU-8 surrogate pairs and Java's `C0 80` for U+0000 (ftfy's
/// "utf-8-variants"). `None` if the bytes are not decodable.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    let mut chunk_start = 0;
    while i < bytes.len() {
        let special = if bytes[i] == 0xC0 && bytes.get(i + 1) == Some(&0x80) {
            Some(('\0', 2))
        } else if bytes[i] == 0xED
            && i + 6 <= bytes.len()
            && (0xA0..=0xAF).contains(&bytes[i + 1])
            && (0x80..=0xBF).contains(&bytes[i + 2])
            && bytes[i + 3] == 0xED
            && (0xB0..=0xBF).contains(&bytes[i + 4])
            && (0x80..=0xBF).contains(&bytes[i + 5])
        {
            let cp = (((bytes[i + 1] & 0x0F) as u32) << 16)
                + (((bytes[i + 2] & 0x3F) as u32) << 10)
                + (((bytes[i + 4] & 0x0F) as u32) << 6)
                + ((bytes[i + 5] & 0x3F) as u32)
                + 0x10000;
            Some((char::from_u32(cp)?, 6))
        } else {
            None
        };
        match special {
            Some((c, len)) => {
                out.push_str(std::str::from_utf8(&bytes[chunk_start..i]).ok()?);
                out.push(c);
                i += len;
                chunk_start = i;
            }
            None => i += 1,
        }
    }
    out.push_str(std::str::from_utf8(&bytes[chunk_start..]).ok()?);
    Some(out)
}

// ---------------------------------------------------------------------------
// Mojibake detection and repair

/// A character that is the Latin-1/Windows-1252 reading of a UTF-8
/// continuation byte (80..BF).
fn is_continuation(c: char) -> bool {
    western_byte(c).is_some_and(|b| (0x80..=0xBF).contains(&b))
}

/// Continuation characters that are not common punctuation on their own:
/// mojibake runs are not taken to start right after one of these.
fn is_strict_continuation(c: char) -> bool {
    is_continuation(c) && !matches!(c, '‚' | '„' | '…' | '‘' | '’' | '“' | '”' | '•' | '–' | '—')
}

/// How many bytes a UTF-8 sequence started by this character (read as
/// Latin-1) has; 0 if it is no lead byte. For 4-byte leads only `ð` (F0) and
/// `ó` (F3) count, as in ftfy.
fn lead_len(c: char) -> usize {
    match c as u32 {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0 | 0xF3 => 4,
        _ => 0,
    }
}

/// Whether a UTF-8 lead byte read as Latin-1 (`a`) followed by a continuation
/// byte read as Latin-1/Windows-1252 (`b`) is suspicious on its own. These
/// rules were fitted to ftfy's verdict on every such pair (measured with
/// `ftfy.badness.is_bad`, not taken from its source): `Â Ã Î Ð` before
/// nearly anything is mojibake; most other capitals only before rare
/// symbols; lowercase 3-byte leads before currency, rare symbols and
/// capital-like Windows-1252 letters; `Ò`..`Û`, `Þ`, `ó` never on their own.
fn suspicious_pair(a: char, b: char) -> bool {
    const RARE: &str = "¤¦§¨ª¬¯°±²³µ¶¸¹º¼½¾ƒˆ˜†‡‰";
    const LOWER_BAD: &str = "¢£¤¥¦¨ª¬¯¸ºŒŠŸŽƒˆ˜†‡‰€";
    match a {
        'Â' | 'Ã' | 'Î' | 'Ð' => !"¥Œ\u{17d}’…".contains(b),
        'Ä' | 'Å' | 'Æ' | 'Ç' | 'È' | 'É' | 'Ê' | 'Ë' | 'Ì' | 'Í' | 'Ï' | 'Ñ' | 'Ø' | 'Ü' | 'Ý' => {
            RARE.contains(b)
        }
        '×' => !"\u{a0}¢£¥§\u{ad}®°±´µ¶·¹»¼½¾–—’”…›€™".contains(b),
        'à' => LOWER_BAD.contains(b) || "²µ¹¼½¾".contains(b),
        'ß' | 'á'..='ï' | 'ð' => LOWER_BAD.contains(b),
        _ => false,
    }
}

/// Whether the text looks like it holds UTF-8 mojibake: a C1 control
/// character; a [`suspicious_pair`] of a lead and a continuation character;
/// `œ`/`Œ` before anything but a Latin letter; `ï»¿` (a byte-order mark);
/// or `Ã`/`Â` followed by a space where an A0 byte was lost (after a
/// lowercase letter, or at the start).
pub fn looks_like_mojibake(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if ('\u{80}'..='\u{9F}').contains(&c) {
            return true;
        }
        if let Some(&next) = chars.get(i + 1) {
            if is_continuation(next) && suspicious_pair(c, next) {
                return true;
            }
        }
        // `œ`/`Œ` not followed by a Latin letter (as in `âœ”` for ✔).
        if (c == 'œ' || c == 'Œ') && chars.get(i + 1).is_some_and(|n| !n.is_ascii_alphabetic()) {
            return true;
        }
        // A byte-order mark read as Latin-1.
        if c == 'ï' && chars.get(i + 1) == Some(&'»') && chars.get(i + 2) == Some(&'¿') {
            return true;
        }
        if (c == 'Ã' || c == 'Â') && chars.get(i + 1) == Some(&' ') {
            if i == 0 {
                return true;
            }
            let prev = chars[i - 1];
            let before = if prev.is_whitespace() && i >= 2 {
                chars[i - 2]
            } else {
                prev
            };
            if before.is_ascii_lowercase() {
                return true;
            }
        }
    }
    false
}

/// ftfy's `fix_encoding`: repeats one repair step until nothing changes.
pub fn fix_encoding(text: &str) -> String {
    fix_encoding_with(text, &FixOptions::default())
}

fn fix_encoding_with(text: &str, opts: &FixOptions) -> String {
    let mut text = text.to_string();
    loop {
        let next = fix_encoding_step(&text, opts);
        if next == text {
            return text;
        }
        text = next;
    }
}

fn fix_encoding_step(text: &str, opts: &FixOptions) -> String {
    if text.is_ascii() || !looks_like_mojibake(text) {
        return text.to_string();
    }
    let mut possible = Vec::new();
    for charmap in [Charmap::Latin1, Charmap::SloppyCp1252] {
        let Some(mut bytes) = charmap.encode(text) else {
            continue;
        };
        possible.push(charmap);
        if opts.restore_byte_a0 && has_match(&bytes, ALTERED_UTF8) {
            bytes = restore_byte_a0(&bytes);
        }
        if opts.replace_lossy_sequences && charmap == Charmap::SloppyCp1252 {
            bytes = replace_lossy_sequences(&bytes);
        }
        let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if let Some(fixed) = decoded {
            return fixed;
        }
    }
    if opts.decode_inconsistent_utf8 {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    if possible.contains(&Charmap::Latin1) {
        if possible.contains(&Charmap::SloppyCp1252) {
            return text.to_string();
        }
        // Latin-1 with C1 controls that Windows-1252 defines: decode strictly.
        let strict: Option<String> = text
            .chars()
            .map(|c| match c as u32 {
                0x80..=0x9F => CP1252_HIGH[(c as u32 - 0x80) as usize],
                _ => Some(c),
            })
            .collect();
        if let Some(fixed) = strict {
            if fixed != text {
                return fixed;
            }
        }
    }
    if opts.fix_c1_controls && text.chars().any(|c| ('\u{80}'..='\u{9F}').contains(&c)) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

/// Fixes runs of UTF-8 mojibake inside text that, as a whole, cannot be
/// re-decoded (mixed good and bad text).
pub fn decode_inconsistent_utf8(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let preceded = i > 0 && is_strict_continuation(chars[i - 1]);
        let mut end = i;
        if !preceded {
            loop {
                // A space may stand for a lost A0 byte inside a run.
                let n = chars.get(end).map_or(0, |&c| lead_len(c));
                if n == 0
                    || end + n > chars.len()
                    || !chars[end + 1..end + n]
                        .iter()
                        .all(|&c| c == ' ' || is_continuation(c))
                {
                    break;
                }
                end += n;
            }
        }
        if end > i {
            let run: String = chars[i..end].iter().collect();
            if end - i < chars.len() && looks_like_mojibake(&run) {
                out.push_str(&fix_encoding(&run));
            } else {
                out.push_str(&run);
            }
            i = end;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// C1 control characters (U+0080..U+009F) → their Windows-1252 characters.
pub fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| match c as u32 {
            0x80..=0x9F => sloppy_cp1252_decode(c as u32 as u8),
            _ => c,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Character-level fixes

/// Latin ligatures → their letters (`ﬁ` → `fi`, `Ĳ` → `IJ`, `ǆ` → `dž`).
pub fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let r = match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(r);
    }
    out
}

/// Fullwidth and halfwidth forms (U+FF01..U+FFEF) → their NFKC forms;
/// ideographic space U+3000 → ASCII space.
pub fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c as u32 {
            0x3000 => out.push(' '),
            0xFF01..=0xFFEF => out.extend(std::iter::once(c).nfkc()),
            _ => out.push(c),
        }
    }
    out
}

/// Curly quotes → straight: U+2018..U+201B and U+02BC → `'`, U+201C..U+201F → `"`.
pub fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => '\'',
            '\u{201C}'..='\u{201F}' => '"',
            _ => c,
        })
        .collect()
}

/// `\r\n`, `\r`, U+2028, U+2029 and U+0085 → `\n`.
pub fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => '\n',
            _ => c,
        })
        .collect()
}

/// Removes ANSI terminal escapes `ESC [ digits/semicolons letter`.
pub fn remove_terminal_escapes(text: &str) -> String {
    if !text.contains('\u{1b}') {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1b}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Removes control characters with no visible effect: C0 controls except
/// tab, LF, FF and CR; DEL; U+206A..U+206F; BOM U+FEFF; U+FFF9..U+FFFC.
pub fn remove_control_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            !matches!(c as u32,
                0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp1252_round_trip() {
        for b in 0x80u8..=0x9F {
            let c = sloppy_cp1252_decode(b);
            assert_eq!(Charmap::SloppyCp1252.encode_char(c), Some(b), "byte {b:#x}");
        }
        assert_eq!(Charmap::SloppyCp1252.encode_char('\u{FFFD}'), Some(0x1A));
        assert_eq!(Charmap::SloppyCp1252.encode_char('\u{1A}'), None);
        assert_eq!(Charmap::Latin1.encode_char('€'), None);
    }

    #[test]
    fn cesu8_and_java_null() {
        // U+1F600 as CESU-8: D83D DE00.
        let bytes = [b'a', 0xED, 0xA0, 0xBD, 0xED, 0xB8, 0x80, 0xC0, 0x80];
        assert_eq!(decode_utf8_variants(&bytes).unwrap(), "a\u{1F600}\0");
        assert!(decode_utf8_variants(&[0xED, 0xA0, 0x80]).is_none());
    }

    #[test]
    fn numeric_references() {
        assert_eq!(
            unescape_html("&#x2019;&#8217;&#150;&#0;&#1;x"),
            "\u{2019}\u{2019}\u{2013}\u{FFFD}x"
        );
        assert_eq!(
            unescape_html("&#xZZ; &#65abc; &#99999999;"),
            "&#xZZ; &#65abc; \u{FFFD}"
        );
    }
}
