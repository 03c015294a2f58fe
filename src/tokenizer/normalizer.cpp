#include "tokenizer/normalizer.h"

#include <utf8proc.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "ember/error.h"
#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"

namespace ember::tok {
namespace {

constexpr char32_t kCodePoints = 0x110000;

// A code point is NFC-inert when it is a starter (combining class 0) that has no canonical
// decomposition and never appears after the first position of one, so it can neither change nor
// combine with a neighbour. A string made only of inert code points is already NFC. The table is
// derived from utf8proc's own data so it always agrees with the utf8proc_map() fallback.
//
// HF's NFC knows Unicode 9.0 only (tests/golden/hf_unicode_probe.py): a code point assigned later
// is to it a starter that neither decomposes nor composes, whatever utf8proc knows of it. Such a
// code point is a barrier: nothing moves across it and nothing composes with it, so the text on
// each side is normalized on its own and the code point itself is never handed to utf8proc.
class InertTable {
 public:
  InertTable() : inert_(kCodePoints / 64, ~uint64_t{0}), barrier_(kCodePoints / 64, 0) {
    char32_t next = 0;
    for (size_t r = 0; r < kAssignedInNormalizerVersionCount; ++r) {
      for (char32_t cp = next; cp < kAssignedInNormalizerVersion[r].first; ++cp) set(barrier_, cp);
      next = kAssignedInNormalizerVersion[r].last + 1;
    }
    for (char32_t cp = next; cp < kCodePoints; ++cp) set(barrier_, cp);
    utf8proc_int32_t buf[32];
    for (char32_t cp = 0x300; cp < kCodePoints; ++cp) {
      if (test(barrier_, cp)) continue;
      const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
      if (p->combining_class != 0) clear(inert_, cp);
      if (p->decomp_seqindex == UINT16_MAX || p->decomp_type != 0) continue;
      int last_boundclass = 0;
      const auto n =
          utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 32, UTF8PROC_DECOMPOSE, &last_boundclass);
      if (n == 1 && static_cast<char32_t>(buf[0]) == cp) continue;
      clear(inert_, cp);
      for (utf8proc_ssize_t k = 1; k < n && k < 32; ++k) clear(inert_, static_cast<char32_t>(buf[k]));
    }
    // Conjoining jamo compose algorithmically (not through the decomposition data).
    for (char32_t cp = 0x1100; cp < 0x1200; ++cp) clear(inert_, cp);
  }
  // Barriers count as inert: they end the stretch before them.
  bool inert(char32_t cp) const { return test(inert_, cp) || test(barrier_, cp); }
  bool barrier(char32_t cp) const { return test(barrier_, cp); }

 private:
  static bool test(const std::vector<uint64_t>& bits, char32_t cp) { return (bits[cp >> 6] >> (cp & 63)) & 1; }
  static void clear(std::vector<uint64_t>& bits, char32_t cp) { bits[cp >> 6] &= ~(uint64_t{1} << (cp & 63)); }
  static void set(std::vector<uint64_t>& bits, char32_t cp) { bits[cp >> 6] |= uint64_t{1} << (cp & 63); }
  std::vector<uint64_t> inert_;
  std::vector<uint64_t> barrier_;
};

const InertTable& inert_table() {
  static const InertTable table;
  return table;
}

bool is_nfc_spec(const nlohmann::json& spec) { return spec.is_object() && spec.value("type", "") == "NFC"; }

}  // namespace

Normalizer Normalizer::from_json(const nlohmann::json& spec) {
  Normalizer n;
  if (spec.is_null()) return n;
  if (is_nfc_spec(spec)) {
    n.nfc_ = true;
  } else if (spec.is_object() && spec.value("type", "") == "Sequence" && spec.contains("normalizers")) {
    for (const auto& child : spec.at("normalizers")) {
      if (!is_nfc_spec(child)) {
        throw Error("normalizer " + child.dump() +
                    " is not supported (ember supports none, NFC, or a Sequence of NFC)");
      }
      n.nfc_ = true;
    }
  } else {
    throw Error("normalizer " + spec.dump().substr(0, 200) +
                " is not supported (ember supports none, NFC, or a Sequence of NFC)");
  }
  if (n.nfc_) inert_table();  // build it at load time, not inside the first encode()
  return n;
}

// Only the stretches around non-inert code points go through utf8proc. Such a stretch starts at
// the inert code point before it (a starter that may compose with what follows) and ends before
// the next inert code point (which nothing before it can change).
std::string_view Normalizer::apply(std::string_view text, std::string& buf) const {
  if (!nfc_) return text;
  const InertTable& table = inert_table();
  size_t copied = 0;                           // text[0, copied) is already in buf
  size_t last_inert = std::string_view::npos;  // start of the latest inert code point
  bool changed = false;
  for (size_t i = 0; i < text.size();) {
    const size_t cp_start = i;
    // Everything below U+0300 (lead bytes below 0xCC) is inert.
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0xCC) {
      last_inert = i;
      i += lead < 0x80 ? 1 : 2;
      continue;
    }
    const char32_t cp = next_code_point(text, i);
    if (table.barrier(cp)) {
      last_inert = i;  // a stretch after it starts after it: nothing composes with a barrier
      continue;
    }
    if (table.inert(cp)) {
      last_inert = cp_start;
      continue;
    }
    size_t end = i;
    while (end < text.size()) {
      size_t next = end;
      const char32_t cp = next_code_point(text, next);
      if (cp < 0x300 || table.inert(cp)) break;
      end = next;
    }
    const size_t from = last_inert != std::string_view::npos && last_inert >= copied ? last_inert : copied;
    if (!changed) {
      buf.clear();
      changed = true;
    }
    buf.append(text.substr(copied, from - copied));
    nfc_append(text.substr(from, end - from), buf);
    copied = i = end;
    last_inert = std::string_view::npos;
  }
  if (!changed) return text;
  buf.append(text.substr(copied));
  return buf;
}

void Normalizer::nfc_append(std::string_view text, std::string& out) {
  // Canonical decomposition at most quadruples the code point count; utf8proc reports the size
  // it needs if that is ever wrong.
  thread_local std::vector<utf8proc_int32_t> codes;
  const auto* src = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  codes.resize(text.size() * 4 + 8);
  auto n = utf8proc_decompose(src, static_cast<utf8proc_ssize_t>(text.size()), codes.data(),
                              static_cast<utf8proc_ssize_t>(codes.size()), options);
  if (n > static_cast<utf8proc_ssize_t>(codes.size())) {
    codes.resize(static_cast<size_t>(n));
    n = utf8proc_decompose(src, static_cast<utf8proc_ssize_t>(text.size()), codes.data(), n, options);
  }
  if (n >= 0) n = utf8proc_reencode(codes.data(), n, options);  // composes, then writes UTF-8 in place
  if (n < 0) throw Error(std::string("NFC normalization failed: ") + utf8proc_errmsg(n));
  out.append(reinterpret_cast<const char*>(codes.data()), static_cast<size_t>(n));
}

}  // namespace ember::tok
