#include "tokenizer/unicode_tables.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <vector>

namespace ember::tok {
namespace {

constexpr char32_t kLastCodePoint = 0x10FFFF;
constexpr char32_t kSurrogateFirst = 0xD800, kSurrogateLast = 0xDFFF;

constexpr uint32_t bit(GeneralCategory c) { return uint32_t{1} << static_cast<unsigned>(c); }

// Oniguruma compares property names ignoring case, spaces, '-' and '_'.
std::string loose(std::string_view name) {
  std::string out;
  for (const char c : name) {
    if (c == ' ' || c == '-' || c == '_') continue;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

struct CategoryName {
  const char* short_name;
  const char* long_name;
  uint32_t mask;
};

using G = GeneralCategory;
const std::array<CategoryName, 38> kNames = {{
    {"L", "Letter", bit(G::Lu) | bit(G::Ll) | bit(G::Lt) | bit(G::Lm) | bit(G::Lo)},
    {"LC", "Cased_Letter", bit(G::Lu) | bit(G::Ll) | bit(G::Lt)},
    {"Lu", "Uppercase_Letter", bit(G::Lu)},
    {"Ll", "Lowercase_Letter", bit(G::Ll)},
    {"Lt", "Titlecase_Letter", bit(G::Lt)},
    {"Lm", "Modifier_Letter", bit(G::Lm)},
    {"Lo", "Other_Letter", bit(G::Lo)},
    {"M", "Mark", bit(G::Mn) | bit(G::Mc) | bit(G::Me)},
    {"Mn", "Nonspacing_Mark", bit(G::Mn)},
    {"Mc", "Spacing_Mark", bit(G::Mc)},
    {"Me", "Enclosing_Mark", bit(G::Me)},
    {"N", "Number", bit(G::Nd) | bit(G::Nl) | bit(G::No)},
    {"Nd", "Decimal_Number", bit(G::Nd)},
    {"Nl", "Letter_Number", bit(G::Nl)},
    {"No", "Other_Number", bit(G::No)},
    {"P", "Punctuation", bit(G::Pc) | bit(G::Pd) | bit(G::Ps) | bit(G::Pe) | bit(G::Pi) | bit(G::Pf) | bit(G::Po)},
    {"Pc", "Connector_Punctuation", bit(G::Pc)},
    {"Pd", "Dash_Punctuation", bit(G::Pd)},
    {"Ps", "Open_Punctuation", bit(G::Ps)},
    {"Pe", "Close_Punctuation", bit(G::Pe)},
    {"Pi", "Initial_Punctuation", bit(G::Pi)},
    {"Pf", "Final_Punctuation", bit(G::Pf)},
    {"Po", "Other_Punctuation", bit(G::Po)},
    {"S", "Symbol", bit(G::Sm) | bit(G::Sc) | bit(G::Sk) | bit(G::So)},
    {"Sm", "Math_Symbol", bit(G::Sm)},
    {"Sc", "Currency_Symbol", bit(G::Sc)},
    {"Sk", "Modifier_Symbol", bit(G::Sk)},
    {"So", "Other_Symbol", bit(G::So)},
    {"Z", "Separator", bit(G::Zs) | bit(G::Zl) | bit(G::Zp)},
    {"Zs", "Space_Separator", bit(G::Zs)},
    {"Zl", "Line_Separator", bit(G::Zl)},
    {"Zp", "Paragraph_Separator", bit(G::Zp)},
    {"C", "Other", bit(G::Cc) | bit(G::Cf) | bit(G::Cs) | bit(G::Co) | bit(G::Cn)},
    {"Cc", "Control", bit(G::Cc)},
    {"Cf", "Format", bit(G::Cf)},
    {"Cs", "Surrogate", bit(G::Cs)},
    {"Co", "Private_Use", bit(G::Co)},
    {"Cn", "Unassigned", bit(G::Cn)},
}};

void append_range(std::string& out, char32_t first, char32_t last) {
  // A UTF-8 pattern cannot name surrogates; no UTF-8 text holds them either.
  if (first <= kSurrogateLast && last >= kSurrogateFirst) {
    if (first < kSurrogateFirst) append_range(out, first, kSurrogateFirst - 1);
    if (last > kSurrogateLast) append_range(out, kSurrogateLast + 1, last);
    return;
  }
  if (first == last) {
    fmt::format_to(std::back_inserter(out), "\\x{{{:X}}}", static_cast<uint32_t>(first));
  } else {
    fmt::format_to(std::back_inserter(out), "\\x{{{:X}}}-\\x{{{:X}}}", static_cast<uint32_t>(first),
                   static_cast<uint32_t>(last));
  }
}

// The library's own classes for `mask`, as items of a character class, in the one- and two-letter
// names PCRE2 knows in every version: whole groups (\p{L}) first, then single categories.
std::string native_items(uint32_t mask) {
  std::string out;
  for (const size_t name_length : {1, 2}) {
    for (const CategoryName& n : kNames) {
      const std::string_view name = n.short_name;
      if (name.size() != name_length || name == "LC" || (mask & n.mask) != n.mask) continue;
      out += fmt::format("\\p{{{}}}", name);
      mask &= ~n.mask;
    }
  }
  return out;
}

}  // namespace

GeneralCategory general_category(char32_t cp) {
  const CategoryRange* end = kCategoryRanges + kCategoryRangeCount;
  const CategoryRange* it =
      std::upper_bound(kCategoryRanges, end, cp, [](char32_t c, const CategoryRange& r) { return c < r.first; });
  if (it == kCategoryRanges) return GeneralCategory::Cn;
  --it;
  return cp <= it->last ? it->category : GeneralCategory::Cn;
}

bool assigned_in_normalizer_version(char32_t cp) {
  const CodePointRange* end = kAssignedInNormalizerVersion + kAssignedInNormalizerVersionCount;
  const CodePointRange* it = std::upper_bound(kAssignedInNormalizerVersion, end, cp,
                                              [](char32_t c, const CodePointRange& r) { return c < r.first; });
  return it != kAssignedInNormalizerVersion && cp <= (it - 1)->last;
}

uint32_t category_mask(std::string_view property_name) {
  const std::string key = loose(property_name);
  for (const CategoryName& n : kNames) {
    if (key == loose(n.short_name) || key == loose(n.long_name)) return n.mask;
  }
  return 0;
}

std::string class_body(uint32_t mask, bool complement) {
  // The ranges of the mask's categories, adjacent ones merged; Cn is what the table leaves out.
  std::vector<CodePointRange> in;
  char32_t next = 0;  // first code point not yet covered by the table's walk
  auto add = [&](char32_t first, char32_t last) {
    if (!in.empty() && in.back().last + 1 == first) {
      in.back().last = last;
    } else {
      in.push_back({first, last});
    }
  };
  const bool unassigned = mask & bit(GeneralCategory::Cn);
  for (size_t i = 0; i < kCategoryRangeCount; ++i) {
    const CategoryRange& r = kCategoryRanges[i];
    if (unassigned && r.first > next) add(next, r.first - 1);
    if (mask & bit(r.category)) add(r.first, r.last);
    next = r.last + 1;
  }
  if (unassigned && next <= kLastCodePoint) add(next, kLastCodePoint);

  std::string out;
  if (!complement) {
    for (const CodePointRange& r : in) append_range(out, r.first, r.last);
    return out;
  }
  char32_t from = 0;
  for (const CodePointRange& r : in) {
    if (r.first > from) append_range(out, from, r.first - 1);
    from = r.last + 1;
  }
  if (from <= kLastCodePoint) append_range(out, from, kLastCodePoint);
  return out;
}

}  // namespace ember::tok

namespace ember::tok {

std::string category_class(uint32_t mask, bool negated, bool in_class, std::string_view library_version) {
  const std::string explicit_item =
      in_class ? class_body(mask, negated) : std::string(negated ? "[^" : "[") + class_body(mask, false) + "]";
  if (negated && in_class) return explicit_item;  // "not the library's class" cannot take additions
  size_t version = kRegexLibraryVersionCount;
  for (size_t v = 0; v < kRegexLibraryVersionCount; ++v) {
    if (library_version == kRegexLibraryVersions[v]) version = v;
  }
  const bool same_version = library_version == kClassifierUnicodeVersion;
  if (version == kRegexLibraryVersionCount && !same_version) return explicit_item;
  std::string body = native_items(mask);
  for (size_t i = 0; i < kCategoryChangeCount && !same_version; ++i) {
    const CategoryChange& c = kCategoryChanges[i];
    if (c.version != version) continue;
    const bool was = mask & bit(c.from), is = mask & bit(c.to);
    if (was && !is) return explicit_item;  // the library's class holds code points ours does not
    if (is && !was) append_range(body, c.first, c.last);
  }
  if (in_class) return body;
  return std::string(negated ? "[^" : "[") + body + "]";
}

}  // namespace ember::tok
