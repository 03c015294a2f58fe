#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <fstream>

#include "ember/error.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace ember;

namespace {

using ember_test::error_of;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ember_safetensors_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file with the given raw header text and `data_bytes` bytes of data after it.
  fs::path write_raw(const std::string& name, const std::string& header, size_t data_bytes, uint64_t declared_len) {
    const fs::path p = dir_ / name;
    std::ofstream out(p, std::ios::binary);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(declared_len >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    const std::string data(data_bytes, '\x01');
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    return p;
  }
  fs::path write_raw(const std::string& name, const std::string& header, size_t data_bytes) {
    return write_raw(name, header, data_bytes, header.size());
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  std::vector<float> f32(2 * 3);
  for (size_t i = 0; i < f32.size(); ++i) f32[i] = 0.5f * static_cast<float>(i) - 1.25f;
  std::vector<uint16_t> f16 = {f32_to_f16(1.0f), f32_to_f16(-2.5f), f32_to_f16(0.125f), f32_to_f16(65504.0f)};
  std::vector<uint16_t> bf16(5);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = f32_to_bf16(3.0f * static_cast<float>(i) + 0.75f);

  const fs::path p = dir_ / "model.safetensors";
  // Written in a non-alphabetical order to check data placement follows the given order.
  write_safetensors(p, {{"z.weight", DType::F32, {2, 3}, f32.data()},
                        {"a.half", DType::F16, {4}, f16.data()},
                        {"m.bf", DType::BF16, {5, 1}, bf16.data()}});

  // The data section starts 8-byte aligned.
  std::ifstream in(p, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len[i];
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(fs::file_size(p), 8 + header_len + 24 + 8 + 10);

  const SafetensorsFile st = SafetensorsFile::open(p);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"a.half", "m.bf", "z.weight"}));
  EXPECT_TRUE(st.contains("m.bf"));
  EXPECT_FALSE(st.contains("nope"));
  EXPECT_EQ(st.entry("z.weight").begin, 0u);
  EXPECT_EQ(st.entry("a.half").begin, 24u);
  EXPECT_EQ(st.entry("m.bf").begin, 32u);
  EXPECT_EQ(st.entry("m.bf").dtype, "BF16");

  const Tensor t32 = st.tensor("z.weight");
  EXPECT_EQ(t32.dtype, DType::F32);
  EXPECT_EQ(t32.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(t32.data, f32.data(), f32.size() * 4), 0);

  const Tensor t16 = st.tensor("a.half");
  EXPECT_EQ(t16.dtype, DType::F16);
  EXPECT_EQ(t16.shape, (std::vector<int64_t>{4}));
  EXPECT_EQ(f16_to_f32(t16.as<uint16_t>()[1]), -2.5f);
  EXPECT_EQ(f16_to_f32(t16.as<uint16_t>()[3]), 65504.0f);

  const Tensor tb = st.tensor("m.bf");
  EXPECT_EQ(tb.dtype, DType::BF16);
  EXPECT_EQ(tb.shape, (std::vector<int64_t>{5, 1}));
  for (size_t i = 0; i < bf16.size(); ++i) EXPECT_EQ(tb.as<uint16_t>()[i], bf16[i]);
}

TEST_F(SafetensorsTest, TensorKeepsMappingAlive) {
  const std::vector<float> values = {1.0f, 2.0f, 3.0f, 4.0f};
  const fs::path p = dir_ / "w.safetensors";
  write_safetensors(p, {{"w", DType::F32, {4}, values.data()}});
  Tensor t;
  {
    const SafetensorsFile st = SafetensorsFile::open(p);
    t = st.tensor("w");
  }
  fs::remove(p);  // the mapping outlives both the SafetensorsFile and the directory entry
  EXPECT_EQ(t.as<float>()[3], 4.0f);
  EXPECT_GE(t.storage.use_count(), 1);
}

TEST_F(SafetensorsTest, EmptyTensorAndMetadata) {
  const fs::path p = write_raw(
      "m.safetensors",
      R"({"__metadata__":{"format":"pt"},"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
      R"("x":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
      4);
  const SafetensorsFile st = SafetensorsFile::open(p);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"e", "x"}));
  EXPECT_EQ(st.tensor("e").numel(), 0);
  EXPECT_EQ(st.tensor("x").nbytes(), 4u);
}

TEST_F(SafetensorsTest, TruncatedFileNamesFileAndTensor) {
  std::vector<float> values(64, 1.0f);
  const fs::path p = dir_ / "model.safetensors";
  write_safetensors(p, {{"first", DType::F32, {16}, values.data()}, {"second", DType::F32, {48}, values.data()}});
  fs::resize_file(p, fs::file_size(p) - 10);
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("'second'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  const fs::path p = write_raw("big.safetensors", "{}", 0, 1u << 20);
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("header length 1048576 exceeds the file size"), std::string::npos) << msg;

  const fs::path tiny = dir_ / "tiny.safetensors";
  std::ofstream(tiny, std::ios::binary) << "abc";
  EXPECT_NE(error_of([&] { SafetensorsFile::open(tiny); }).find("not a safetensors file"), std::string::npos);
}

TEST_F(SafetensorsTest, BadJsonHeader) {
  const fs::path p = write_raw("bad.safetensors", R"({"w": {"dtype": "F32", )", 0);
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;

  const fs::path arr = write_raw("arr.safetensors", "[1,2]", 0);
  EXPECT_NE(error_of([&] { SafetensorsFile::open(arr); }).find("must be a JSON object"), std::string::npos);

  const fs::path no_offsets = write_raw("o.safetensors", R"({"w":{"dtype":"F32","shape":[1]}})", 4);
  const std::string m2 = error_of([&] { SafetensorsFile::open(no_offsets); });
  EXPECT_NE(m2.find("'w'"), std::string::npos) << m2;
  EXPECT_NE(m2.find("data_offsets"), std::string::npos) << m2;
}

TEST_F(SafetensorsTest, UnsupportedDtypeRejectedWhenRead) {
  const fs::path p = write_raw("ids.safetensors",
                               R"({"position_ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},)"
                               R"("w":{"dtype":"BF16","shape":[2],"data_offsets":[24,28]}})",
                               28);
  const SafetensorsFile st = SafetensorsFile::open(p);  // other tensors of the file stay usable
  EXPECT_EQ(st.tensor("w").numel(), 2);
  EXPECT_EQ(st.entry("position_ids").dtype, "I64");
  const std::string msg = error_of([&] { st.tensor("position_ids"); });
  EXPECT_NE(msg.find("'position_ids'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("I64"), std::string::npos) << msg;
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;

  const fs::path f8 = write_raw("f8.safetensors", R"({"q":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(error_of([&] { SafetensorsFile::open(f8).tensor("q"); }).find("F8_E4M3"), std::string::npos);
}

TEST_F(SafetensorsTest, ByteRangeMustMatchShape) {
  const fs::path p = write_raw("s.safetensors", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24);
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_NE(msg.find("'w'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("needs 24 bytes but data_offsets span 20"), std::string::npos) << msg;

  const fs::path rev = write_raw("r.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8);
  EXPECT_NE(error_of([&] { SafetensorsFile::open(rev); }).find("end before they begin"), std::string::npos);
}

TEST_F(SafetensorsTest, TensorOutOfRange) {
  const fs::path p = write_raw("o.safetensors",
                               R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[4],"data_offsets":[100,116]}})",
                               16);
  const std::string msg = error_of([&] { SafetensorsFile::open(p); });
  EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[100, 116)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("only 16 bytes"), std::string::npos) << msg;
}

TEST_F(SafetensorsTest, MissingTensorMessage) {
  const float v = 1.0f;
  const fs::path p = dir_ / "one.safetensors";
  write_safetensors(p, {{"present", DType::F32, {1}, &v}});
  const SafetensorsFile st = SafetensorsFile::open(p);
  const std::string msg = error_of([&] { st.tensor("absent.weight"); });
  EXPECT_EQ(msg, "tensor 'absent.weight' not found in " + p.string());
}

TEST_F(SafetensorsTest, WriteRejectsBadInput) {
  const float v = 1.0f;
  const fs::path p = dir_ / "w.safetensors";
  EXPECT_NE(error_of([&] { write_safetensors(p, {{"a", DType::F32, {1}, &v}, {"a", DType::F32, {1}, &v}}); })
                .find("'a' given twice"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_safetensors(p, {{"i", DType::I32, {1}, &v}}); }).find("I32"), std::string::npos);
  const std::string msg = error_of([&] { write_safetensors(dir_ / "no_such_dir" / "x.safetensors", {}); });
  EXPECT_NE(msg.find("cannot create"), std::string::npos) << msg;
  if (fs::exists("/dev/full")) {
    std::vector<float> big(1 << 16, 0.0f);
    const std::string full = error_of([&] { write_safetensors("/dev/full", {{"big", DType::F32, {1 << 16}, big.data()}}); });
    EXPECT_NE(full.find("/dev/full"), std::string::npos) << full;
  }
}

}  // namespace
