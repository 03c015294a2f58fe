// End-to-end tests of the `ember` executable: real processes, real files, a generated tiny model.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "ember/engine.h"
#include "ember/error.h"
#include "model/make_model.h"

namespace fs = std::filesystem;

namespace {

struct Result {
  int code = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& p, const std::string& data) {
  std::ofstream out(p, std::ios::binary);
  out << data;
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("ember_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    ember::MakeModelOptions options;
    options.tokenizer_dir = EMBER_TOKENIZER_DIR;
    ember::make_model(ember::preset_config("tiny"), options, root_ / "tiny");
    // The 4B/8B checkpoints have fewer embedding rows (151665) than the tokenizer has ids.
    ember::ModelConfig small_vocab = ember::preset_config("tiny");
    small_vocab.vocab_size = 151665;
    small_vocab.num_hidden_layers = 1;
    ember::make_model(small_vocab, options, root_ / "small_vocab");
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static Result run(const std::string& args, const std::string& stdin_text = "") {
    const fs::path in = root_ / "stdin.txt", out = root_ / "stdout.txt", err = root_ / "stderr.txt";
    write_file(in, stdin_text);
    const std::string cmd =
        std::string(EMBER_BINARY) + " " + args + " <" + in.string() + " >" + out.string() + " 2>" + err.string();
    const int status = std::system(cmd.c_str());
    Result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  static std::vector<nlohmann::json> lines(const std::string& text) {
    std::vector<nlohmann::json> v;
    std::istringstream s(text);
    for (std::string line; std::getline(s, line);) v.push_back(nlohmann::json::parse(line));
    return v;
  }

  static std::string model() { return (root_ / "tiny").string(); }
  static inline fs::path root_;
};

double norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

TEST_F(CliTest, EmbedTextFileGivesOneNormalisedLinePerTextInOrder) {
  write_file(root_ / "in.txt", "first text\r\n\nthird: 東京 🚀\n");
  const Result r = run("embed --model " + model() + " --input " + (root_ / "in.txt").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = lines(r.out);
  ASSERT_EQ(out.size(), 3u);  // the empty line is a text (just <|endoftext|>), the final newline is not
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(out[i]["index"], i);
    EXPECT_TRUE(out[i]["id"].is_null());
    const auto e = out[i]["embedding"].get<std::vector<double>>();
    EXPECT_EQ(e.size(), 64u);
    EXPECT_NEAR(norm(e), 1.0, 1e-5);
  }
  EXPECT_NE(out[0]["embedding"], out[2]["embedding"]);
}

TEST_F(CliTest, EmbedMatchesTheLibraryAndHonoursIdsDimensionsAndInstruction) {
  write_file(root_ / "in.jsonl",
             "{\"text\": \"hello world\", \"id\": \"doc-1\"}\n\n{\"text\": \"second\", \"id\": 7}\n");
  const fs::path out_path = root_ / "out.jsonl";
  Result r = run("embed --model " + model() + " --input " + (root_ / "in.jsonl").string() + " --output " +
                 out_path.string() + " --dimensions 32 --instruction 'Find the answer'");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = lines(slurp(out_path));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0]["id"], "doc-1");
  EXPECT_EQ(out[1]["id"], 7);

  ember::EngineOptions options;
  options.model = model();
  auto engine = ember::Engine::open(options);
  ember::EmbedOptions embed;
  embed.dimensions = 32;
  embed.instruction = "Find the answer";
  const auto expected = engine->embed_texts({"hello world", "second"}, embed);
  for (size_t i = 0; i < 2; ++i) {
    const auto got = out[i]["embedding"].get<std::vector<float>>();
    ASSERT_EQ(got.size(), 32u);
    for (size_t j = 0; j < 32; ++j) EXPECT_EQ(got[j], expected[i][j]) << "text " << i << " value " << j;
  }
}

TEST_F(CliTest, TokenizePrintsModelInputIdsWithEndOfText) {
  const Result r = run("tokenize --model " + model(), "Hello world\n\n<|im_start|>\n");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = lines(r.out);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], nlohmann::json({9707, 1879, 151643}));
  EXPECT_EQ(out[1], nlohmann::json({151643}));
  EXPECT_EQ(out[2], nlohmann::json({151644, 151643}));
}

TEST_F(CliTest, InfoDescribesTheModel) {
  const Result r = run("info --model " + model());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("hidden size      64"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("BF16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("parameters"), std::string::npos) << r.out;
}

TEST_F(CliTest, MissingOrIncompleteModelFolderIsAClearError) {
  Result r = run("embed --model " + (root_ / "nope").string(), "x\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;

  fs::create_directories(root_ / "incomplete");
  fs::copy_file(root_ / "tiny" / "config.json", root_ / "incomplete" / "config.json");
  fs::copy_file(root_ / "tiny" / "tokenizer.json", root_ / "incomplete" / "tokenizer.json");
  r = run("embed --model " + (root_ / "incomplete").string(), "x\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("safetensors"), std::string::npos) << r.err;
}

TEST_F(CliTest, BadInputNamesTheLineAndLeavesNoOutputFile) {
  const fs::path out_path = root_ / "never.jsonl";
  write_file(root_ / "bad_utf8.txt", "fine\nalso fine\nbroken \xff\xfe here\n");
  Result r = run("embed --model " + model() + " --input " + (root_ / "bad_utf8.txt").string() + " --output " +
                 out_path.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("line 3"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out_path));

  write_file(root_ / "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 12}\n");
  r = run("embed --model " + model() + " --input " + (root_ / "bad.jsonl").string() + " --output " + out_path.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  write_file(root_ / "bad2.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  r = run("embed --model " + model() + " --input " + (root_ / "bad2.jsonl").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out_path));
  for (const auto& entry : fs::directory_iterator(root_)) {
    EXPECT_EQ(entry.path().filename().string().find(".never.jsonl.tmp"), std::string::npos);
  }
}

TEST_F(CliTest, OverLongInputFailsUnlessTruncated) {
  // Generated with a small maximum so the test stays fast.
  ember::ModelConfig short_context = ember::preset_config("tiny");
  short_context.max_position_embeddings = 64;
  ember::MakeModelOptions options;
  options.tokenizer_dir = EMBER_TOKENIZER_DIR;
  const fs::path dir = root_ / "short_context";
  if (!fs::exists(dir)) ember::make_model(short_context, options, dir);
  std::string text;
  for (int i = 0; i < 100; ++i) text += "word ";
  Result r = run("embed --model " + dir.string(), text + "\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("line 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--truncate"), std::string::npos) << r.err;
  r = run("embed --truncate --model " + dir.string(), text + "\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(lines(r.out).size(), 1u);
}

TEST_F(CliTest, TokenIdOutsideTheModelVocabularyIsAnError) {
  // <think> is id 151667: known to the tokenizer, beyond a 151665-row embedding table.
  const Result r = run("embed --model " + (root_ / "small_vocab").string(), "why <think> fails\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("151667"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("151665"), std::string::npos) << r.err;
}

TEST_F(CliTest, DimensionsOutOfRangeAndUnknownPresetAreErrors) {
  Result r = run("embed --model " + model() + " --dimensions 16", "x\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("dimensions"), std::string::npos) << r.err;
  r = run("make-model --preset huge --out " + (root_ / "huge").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("qwen3-embedding-0.6b"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(root_ / "huge"));
}

// --dtype spells the precision as servers do; float16 is CUDA only, rejected on the CPU both by
// the CLI and by Engine::open.
TEST_F(CliTest, DtypeChoosesThePrecisionAndFloat16NeedsCuda) {
  const std::string text = "what --dtype means\n";
  const Result exact = run("embed --model " + model(), text);
  ASSERT_EQ(exact.code, 0) << exact.err;
  const Result f32 = run("embed --model " + model() + " --dtype float32", text);
  ASSERT_EQ(f32.code, 0) << f32.err;
  EXPECT_EQ(f32.out, exact.out);
  const Result fast = run("embed --model " + model() + " --precision fast", text);
  const Result bf16 = run("embed --model " + model() + " --dtype bfloat16", text);
  ASSERT_EQ(bf16.code, 0) << bf16.err;
  EXPECT_EQ(bf16.out, fast.out);
  EXPECT_NE(bf16.out, exact.out);

  const std::string cpu_only = "float16 runs on CUDA only; on the CPU use bfloat16 (fast) or float32 (exact)";
  Result r = run("embed --model " + model() + " --dtype float16", text);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "ember: error: " + cpu_only + "\n");
  r = run("embed --model " + model() + " --dtype double", text);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("unknown dtype 'double' (expected float32, bfloat16 or float16)"), std::string::npos) << r.err;
  r = run("embed --model " + model() + " --dtype bfloat16 --precision fast", text);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("give --dtype or --precision, not both"), std::string::npos) << r.err;
  r = run("bench --model " + model() + " --dtype float32 --precisions both");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("give --dtype or --precisions, not both"), std::string::npos) << r.err;

  ember::EngineOptions options;
  options.model = model();
  ember::apply_dtype("float16", options);
  EXPECT_EQ(options.precision, ember::Precision::Fast);
  EXPECT_EQ(options.half_type, ember::HalfType::Float16);
  try {
    ember::Engine::open(options);
    ADD_FAILURE() << "a CPU engine in float16 opened";
  } catch (const ember::Error& e) {
    EXPECT_EQ(std::string(e.what()), cpu_only);
  }
}

}  // namespace

namespace {

// Every usage error exits 2 (CLI11's own codes are 100-120), whatever the command.
TEST_F(CliTest, UsageErrorsExitTwo) {
  const std::string m = " --model " + model();
  for (const std::string& args : std::vector<std::string>{
           "", "nosuchcommand", "embed", "embed --nosuchflag" + m, "embed --dimensions -5" + m,
           "embed --threads -1" + m, "embed --max-batch-tokens -3" + m, "embed --max-batch-tokens 0" + m,
           "serve --drain-timeout -1" + m, "serve --http-threads -2" + m, "serve --max-queued-tokens -1" + m,
           "serve --max-input-tokens -7" + m, "serve --port -1" + m, "serve --port 70000" + m,
           "serve --max-concurrent-requests 0" + m, "make-model --preset tiny --out x --shards -1",
           "tokenize" + m + " --input"}) {
    SCOPED_TRACE(args);
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_FALSE(r.err.empty());
  }
  EXPECT_EQ(run("--help").code, 0);
  EXPECT_EQ(run("serve --help").code, 0);
}

// An empty key must not silently serve without authentication.
TEST_F(CliTest, AnEmptyApiKeyIsAnError) {
  Result r = run("serve --port 0 --api-key '' --model " + model());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--api-key is empty"), std::string::npos) << r.err;
  ::setenv("EMBER_API_KEY", "", 1);
  r = run("serve --port 0 --model " + model());
  ::unsetenv("EMBER_API_KEY");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("EMBER_API_KEY is set but empty"), std::string::npos) << r.err;
}

}  // namespace

namespace {

// --output never replaces what is not a regular file: a device or FIFO is written through, a
// symlink is followed, and a directory input is an error.
TEST_F(CliTest, OutputWritesThroughDevicesFifosAndSymlinks) {
  const fs::path dev_null("/dev/null");
  Result r = run("embed --model " + model() + " --output /dev/null", "a\nb\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_character_file(dev_null)) << "/dev/null was replaced by a regular file";
  r = run("embed --model " + model() + " --output /dev/full", "a\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;

  const fs::path fifo = root_ / "out.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const fs::path got = root_ / "from_fifo.txt";
  const std::string reader = "cat " + fifo.string() + " > " + got.string() + " &";
  ASSERT_EQ(std::system(reader.c_str()), 0);
  r = run("embed --model " + model() + " --output " + fifo.string(), "a\nb\n");
  ASSERT_EQ(r.code, 0) << r.err;
  for (int i = 0; i < 100 && lines(slurp(got)).size() < 2; ++i) ::usleep(20000);
  EXPECT_EQ(lines(slurp(got)).size(), 2u);
  EXPECT_TRUE(fs::is_fifo(fifo));

  const fs::path real = root_ / "real.jsonl", link = root_ / "link.jsonl";
  fs::create_symlink(real, link);
  r = run("embed --model " + model() + " --output " + link.string(), "a\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(lines(slurp(real)).size(), 1u);

  r = run("embed --model " + model() + " --input " + root_.string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("is a directory"), std::string::npos) << r.err;
}

// A run stopped by SIGTERM leaves no temporary file; one left by SIGKILL is removed by the next run.
TEST_F(CliTest, SignalsLeaveNoTemporaryFiles) {
  const fs::path dir = root_ / "signals";
  fs::create_directories(dir);
  const fs::path input = dir / "many.txt", output = dir / "out.jsonl";
  std::string text;
  for (int i = 0; i < 4000; ++i) text += "a longer line of text to embed, number " + std::to_string(i) + "\n";
  write_file(input, text);
  auto temps = [&] {
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().starts_with(".out.jsonl.tmp.");
    return n;
  };
  // SIGINT is not tried: a shell starts background jobs with it ignored, and ember keeps it so.
  for (const char* sig : {"TERM", "HUP"}) {
    SCOPED_TRACE(sig);
    const std::string cmd = std::string(EMBER_BINARY) + " embed --model " + model() + " --input " + input.string() +
                            " --output " + output.string() + " 2>/dev/null & pid=$!; " +
                            "for i in $(seq 200); do ls -a " + dir.string() +
                            " | grep -q '^.out.jsonl.tmp.' && break; sleep 0.02; done; kill -" + sig +
                            " $pid; wait $pid; echo $? > " + (dir / "rc").string();
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    EXPECT_NE(slurp(dir / "rc"), "0\n") << "the run finished before the signal";
    EXPECT_EQ(temps(), 0u);
    EXPECT_FALSE(fs::exists(output));
  }
  write_file(dir / ".out.jsonl.tmp.999999999", "left by a killed run");
  write_file(dir / ".out.jsonl.tmp.1", "pid 1 is alive: not ours to remove");
  const Result r = run("embed --model " + model() + " --output " + output.string(), "a\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(dir / ".out.jsonl.tmp.999999999"));
  EXPECT_TRUE(fs::exists(dir / ".out.jsonl.tmp.1"));
  EXPECT_EQ(lines(slurp(output)).size(), 1u);
}

}  // namespace

namespace {

TEST_F(CliTest, ATruncatedModelFileDuringEmbedExitsOneNamingTheFile) {
  const fs::path copy = root_ / "truncated_embed";
  fs::copy(model(), copy, fs::copy_options::recursive);
  const fs::path input = root_ / "truncated_input.txt", err = root_ / "truncated_embed.err";
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "line number " + std::to_string(i) + " of a long input\n";
  write_file(input, text);
  // Cut the file once the run is under way (its temporary output exists), while it still embeds.
  const std::string out = (root_ / "truncated.jsonl").string();
  const std::string cmd =
      std::string(EMBER_BINARY) + " embed --model " + copy.string() + " --max-batch-tokens 64 --input " +
      input.string() + " --output " + out + " 2>" + err.string() + " & pid=$!; for i in $(seq 500); do ls -a " +
      root_.string() + " | grep -q '^.truncated.jsonl.tmp.' && break; sleep 0.01; done; sleep 0.2; truncate -s 1000 " +
      (copy / "model.safetensors").string() + "; wait $pid";
  const int status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << slurp(err);
  EXPECT_NE(slurp(err).find("model.safetensors was truncated or replaced while in use"), std::string::npos)
      << slurp(err);
}

}  // namespace
