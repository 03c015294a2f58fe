#include "tokenizer/regex_split.h"

#include "ember/error.h"
#include "tokenizer/unicode_tables.h"

namespace ember::tok {
namespace {

const std::string& pcre2_unicode_version() {
  static const std::string version = [] {
    char buf[64] = {};
    return pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, buf) > 0 ? std::string(buf) : std::string();
  }();
  return version;
}

// Rewrites a General_Category escape that starts at p[i] ('\\' then 'p' or 'P': \p{L}, \p{^L}, \P{L},
// \pL) into explicit code point ranges of ember's Unicode tables and returns the index of its last
// character; returns i unchanged for any other property (a script, say), which PCRE2 keeps.
size_t expand_category(std::string_view p, size_t i, bool in_class, std::string& out) {
  bool negated = p[i + 1] == 'P';
  std::string_view name;
  size_t last = i + 2;
  if (i + 2 < p.size() && p[i + 2] == '{') {
    const size_t close = p.find('}', i + 3);
    if (close == std::string_view::npos) return i;
    name = p.substr(i + 3, close - i - 3);
    if (!name.empty() && name[0] == '^') {
      negated = !negated;
      name.remove_prefix(1);
    }
    last = close;
  } else if (i + 2 < p.size()) {
    name = p.substr(i + 2, 1);
  } else {
    return i;
  }
  const uint32_t mask = category_mask(name);
  if (mask == 0) return i;
  out += category_class(mask, negated, in_class, pcre2_unicode_version());
  return last;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

constexpr size_t kJitStackStart = 32 * 1024;
constexpr size_t kJitStackMax = 16 * 1024 * 1024;

}  // namespace

RegexScratch::RegexScratch()
    : match_data_(pcre2_match_data_create(1, nullptr)),
      context_(pcre2_match_context_create(nullptr)),
      jit_stack_(pcre2_jit_stack_create(kJitStackStart, kJitStackMax, nullptr)) {
  if (!match_data_ || !context_ || !jit_stack_) throw Error("out of memory creating PCRE2 match state");
  pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
  // The default limit (10 million backtracks) is reached by ordinary input: Qwen's \s*[\r\n]+
  // backtracks once per character of a long whitespace run.
  pcre2_set_match_limit(context_, UINT32_MAX);
}

RegexScratch::~RegexScratch() {
  pcre2_jit_stack_free(jit_stack_);
  pcre2_match_context_free(context_);
  pcre2_match_data_free(match_data_);
}

std::string onig_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    const char next = i + 1 < p.size() ? p[i + 1] : '\0';
    if (c == '\\' && (next == 'p' || next == 'P')) {
      const size_t last = expand_category(p, i, in_class, out);
      if (last != i) {
        i = last;
        continue;
      }
    }
    if (c == '\\' && i + 1 < p.size()) {
      ++i;
      switch (next) {
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'h': out += in_class ? "0-9A-Fa-f" : "[0-9A-Fa-f]"; break;
        case 'H':
          if (in_class) throw Error("regex: \\H inside a character class is not supported");
          out += "[^0-9A-Fa-f]";
          break;
        case 'v': out += "\\x{0B}"; break;
        default: out += c; out += next;
      }
      continue;
    }
    if (in_class) {
      if (c == '[' && next == ':') {  // POSIX class [:alpha:], same in both engines
        const size_t close = p.find(":]", i + 2);
        if (close == std::string_view::npos) throw Error("regex: unterminated POSIX class");
        out.append(p.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
      if (c == '[' || (c == '&' && next == '&')) {
        throw Error("regex: nested character classes and && are Oniguruma-only and not supported");
      }
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    out += c;
    if (c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (next == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
    } else if (c == '(' && next == '?') {
      out += p[++i];
      // Inline flags: Oniguruma's 'm' is PCRE2's 's' (dot matches newline).
      while (i + 1 < p.size() && (p[i + 1] == 'i' || p[i + 1] == 'm' || p[i + 1] == 'x' || p[i + 1] == '-')) {
        out += p[i + 1] == 'm' ? 's' : p[i + 1];
        ++i;
      }
    }
  }
  return out;
}

SplitRegex::SplitRegex(std::string_view pattern, bool literal, const std::string& where) : where_(where) {
  const std::string translated = literal ? std::string(pattern) : onig_to_pcre2(pattern);
  uint32_t options = PCRE2_UTF | PCRE2_UCP;
  if (literal) options |= PCRE2_LITERAL;
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), options, &err,
                                   &err_offset, nullptr);
  if (!code) {
    throw Error(where + ": cannot compile regex /" + std::string(pattern) + "/ (as PCRE2 /" + translated +
                "/): " + pcre2_message(err) + " at offset " + std::to_string(err_offset));
  }
  code_.reset(code, pcre2_code_free);
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

bool SplitRegex::find(std::string_view text, size_t from, RegexScratch& scratch, size_t& start, size_t& end) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  int rc = PCRE2_ERROR_JIT_STACKLIMIT;
  if (jit_) {
    rc = pcre2_jit_match(code_.get(), subject, text.size(), from, 0, scratch.match_data(), scratch.context());
  }
  // The interpreter has no JIT stack limit; it also serves when the JIT is unavailable.
  if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
    rc = pcre2_match(code_.get(), subject, text.size(), from, PCRE2_NO_UTF_CHECK, scratch.match_data(),
                     scratch.context());
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) throw Error(where_ + ": regex match failed: " + pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.match_data());
  start = ov[0];
  end = ov[1];
  return true;
}

}  // namespace ember::tok
