// The pieces of `perceiver serve` that need no model or socket: v2 protocol parsing/encoding (JSON and binary
// tensor data), base64, classification strings, the dynamic batcher and the Prometheus text. The server end
// to end (real sockets, real models) is tests/python/test_serve.py.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "batcher.h"
#include "metrics.h"
#include "protocol.h"

using namespace perceiver::server;

namespace {

std::string u32_le(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[size_t(i)] = char((v >> (8 * i)) & 0xff);
  return s;
}

int status_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const HttpError& e) {
    return e.status();
  }
  return 0;
}

}  // namespace

TEST(ServeProtocol, JsonRequestNestedAndFlat) {
  const auto r = parse_infer_request(
      R"({"id":"42","inputs":[{"name":"pixel_values","shape":[1,3,1,2],"datatype":"FP32",)"
      R"("data":[[[[1,2]],[[3,4]],[[5,6.5]]]]}],"outputs":[{"name":"logits","parameters":{"classification":3}}]})",
      std::nullopt);
  EXPECT_EQ(r.id, "42");
  ASSERT_EQ(r.inputs.size(), 1u);
  EXPECT_EQ(r.inputs[0].shape, (std::vector<int64_t>{1, 3, 1, 2}));
  EXPECT_EQ(r.inputs[0].floats, (std::vector<float>{1, 2, 3, 4, 5, 6.5f}));
  ASSERT_EQ(r.outputs.size(), 1u);
  EXPECT_EQ(r.outputs[0].classification, 3);
  EXPECT_FALSE(r.outputs[0].binary);
}

TEST(ServeProtocol, BinaryInputsFp32AndBytes) {
  const float values[3] = {1.5f, -2.0f, 3.25f};
  const std::string header =
      R"({"inputs":[{"name":"a","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":12}},)"
      R"({"name":"b","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}}],)"
      R"("parameters":{"binary_data_output":true},"outputs":[{"name":"logits"}]})";
  std::string body = header;
  body.append(reinterpret_cast<const char*>(values), sizeof values);
  body += u32_le(3) + "abc" + u32_le(2) + "de";
  const auto r = parse_infer_request(body, header.size());
  ASSERT_EQ(r.inputs.size(), 2u);
  EXPECT_EQ(r.inputs[0].floats, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_TRUE(r.inputs[1].binary);
  EXPECT_EQ(r.inputs[1].bytes, (std::vector<std::string>{"abc", "de"}));
  EXPECT_TRUE(r.outputs[0].binary);  // binary_data_output applies to outputs without "binary_data"
}

TEST(ServeProtocol, BadRequestsAre400) {
  const std::vector<std::string> bad = {
      "{bad",
      "[]",
      R"({"inputs":[]})",
      R"({"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]})",           // too few
      R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]})",         // too many
      R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]})",         // not a number
      R"({"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]})",           // datatype
      R"({"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[]}]})",           // negative dim
      R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[[[1]]]}]})",       // too deep
      R"({"inputs":[{"name":"x","shape":[65536,65536],"datatype":"FP32","data":[]}]})",  // too big
      R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]})",                      // no data
      R"({"id":5,"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]})",    // id not a string
  };
  for (const std::string& body : bad)
    EXPECT_EQ(status_of([&] { parse_infer_request(body, std::nullopt); }), 400) << body;
  // Binary: size disagreeing with the shape, size past the end, leftover bytes, header length past the end.
  const std::string h =
      R"({"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]})";
  EXPECT_EQ(status_of([&] { parse_infer_request(h + std::string(4, 'x'), h.size()); }), 400);
  EXPECT_EQ(status_of([&] { parse_infer_request(h + std::string(9, 'x'), h.size()); }), 400);
  EXPECT_EQ(status_of([&] { parse_infer_request(h, h.size() + 1); }), 400);
  const std::string hb =
      R"({"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]})";
  EXPECT_EQ(status_of([&] { parse_infer_request(hb + u32_le(7) + "ab", hb.size()); }), 400);  // overrun
}

TEST(ServeProtocol, ResponseJsonAndBinary) {
  OutputTensor logits{"logits", "FP32", {1, 2}, {0.5f, -1.0f}, {}, false};
  auto json_response = encode_infer_response("m", "7", {logits});
  EXPECT_FALSE(json_response.header_length);
  const auto j = nlohmann::json::parse(json_response.body);
  EXPECT_EQ(j["model_name"], "m");
  EXPECT_EQ(j["id"], "7");
  EXPECT_EQ(j["outputs"][0]["data"], nlohmann::json::array({0.5, -1.0}));

  logits.binary = true;
  OutputTensor classes{"logits", "BYTES", {1, 1}, {}, {"0.5:0:cat"}, true};
  auto binary_response = encode_infer_response("m", nullptr, {logits, classes});
  ASSERT_TRUE(binary_response.header_length);
  EXPECT_EQ(binary_response.content_type, "application/octet-stream");
  const auto header = nlohmann::json::parse(binary_response.body.substr(0, *binary_response.header_length));
  EXPECT_FALSE(header.contains("id"));
  EXPECT_EQ(header["outputs"][0]["parameters"]["binary_data_size"], 8);
  EXPECT_EQ(header["outputs"][1]["parameters"]["binary_data_size"], 4 + 9);
  const std::string tail = binary_response.body.substr(*binary_response.header_length);
  ASSERT_EQ(tail.size(), 8u + 13u);
  float back[2];
  std::memcpy(back, tail.data(), 8);
  EXPECT_EQ(back[0], 0.5f);
  EXPECT_EQ(back[1], -1.0f);
  EXPECT_EQ(tail.substr(8), u32_le(9) + "0.5:0:cat");
}

TEST(ServeProtocol, ClassificationStrings) {
  const float scores[4] = {1.1f, 3.3f, 0.5f, 3.3f};
  EXPECT_EQ(classification_strings(scores, 4, {"a", "b", "c", "d"}, 3),
            (std::vector<std::string>{"3.29999995:1:b", "3.29999995:3:d", "1.10000002:0:a"}));
  EXPECT_EQ(classification_strings(scores, 4, {}, 9).size(), 4u);  // clamped; no labels: "value:index"
  EXPECT_EQ(classification_strings(scores, 4, {}, 1)[0], "3.29999995:1");
}

TEST(ServeProtocol, Base64) {
  for (const std::string& s : std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar",
                                                       std::string("\0\xff\x10", 3)})
    EXPECT_EQ(decode_base64(encode_base64(s), "x"), s);
  EXPECT_EQ(encode_base64("foobar"), "Zm9vYmFy");
  EXPECT_EQ(decode_base64("Zm9v\nYg==", "x"), "foob");
  for (const char* bad : {"Zm9", "Zm9v!", "Zg=a", "Z==="})
    EXPECT_EQ(status_of([&] { decode_base64(bad, "x"); }), 400) << bad;
}

// A runner whose logits identify each image: logit[b][j] = first pixel of image b + j. Records pass sizes.
struct FakeModel {
  std::mutex mutex;
  std::vector<int> passes;
  BatchRunner runner(int num_labels, std::chrono::milliseconds delay) {
    return [this, num_labels, delay](const float* pixels, int batch, int h, int w, float* logits) {
      std::this_thread::sleep_for(delay);
      for (int b = 0; b < batch; ++b)
        for (int j = 0; j < num_labels; ++j)
          logits[b * num_labels + j] = pixels[size_t(b) * 3 * h * w] + float(j);
      std::lock_guard<std::mutex> lock(mutex);
      passes.push_back(batch);
    };
  }
};

std::shared_ptr<BatchJob> make_job(float tag, int images, int size, int num_labels) {
  auto job = std::make_shared<BatchJob>();
  job->images = images;
  job->height = job->width = size;
  job->pixels.assign(size_t(images) * 3 * size * size, 0.0f);
  for (int b = 0; b < images; ++b) job->pixels[size_t(b) * 3 * size * size] = tag + float(b) * 1000;
  job->logits.resize(size_t(images) * num_labels);
  return job;
}

TEST(ServeBatcher, BatchesConcurrentRequestsAndEachGetsItsRows) {
  FakeModel fake;
  Metrics metrics;
  BatcherOptions options{"m", 3, 8, std::chrono::milliseconds(20), 256};
  Batcher batcher(options, {fake.runner(3, std::chrono::milliseconds(5))}, &metrics);
  std::vector<std::shared_ptr<BatchJob>> jobs;
  std::vector<std::future<void>> done;
  for (int i = 0; i < 24; ++i) {
    jobs.push_back(make_job(float(i), 1 + i % 2, i % 3 == 0 ? 4 : 2, 3));  // two image sizes, 1 or 2 images
    done.push_back(jobs.back()->done.get_future());
    ASSERT_TRUE(batcher.submit(jobs.back()));
  }
  for (auto& d : done) d.wait();
  for (size_t i = 0; i < jobs.size(); ++i) {
    EXPECT_TRUE(jobs[i]->error.empty());
    for (int b = 0; b < jobs[i]->images; ++b)
      for (int j = 0; j < 3; ++j) EXPECT_EQ(jobs[i]->logits[size_t(b) * 3 + j], float(i) + b * 1000 + j);
  }
  int total = 0, largest = 0;
  for (int p : fake.passes) {
    EXPECT_LE(p, 8);
    total += p;
    largest = std::max(largest, p);
  }
  EXPECT_EQ(total, 36);
  EXPECT_LT(fake.passes.size(), 24u);  // batched
  EXPECT_GE(largest, 4);
  EXPECT_NE(metrics.render().find("perceiver_batch_size_sum{model=\"m\"} 36"), std::string::npos);
}

TEST(ServeBatcher, FullQueueRefusesAndStopDrains) {
  FakeModel fake;
  BatcherOptions options{"m", 1, 1, std::chrono::milliseconds(0), 2};
  Batcher batcher(options, {fake.runner(1, std::chrono::milliseconds(50))}, nullptr);
  std::vector<std::shared_ptr<BatchJob>> accepted;
  int refused = 0;
  for (int i = 0; i < 6; ++i) {
    auto job = make_job(float(i), 1, 1, 1);
    if (batcher.submit(job))
      accepted.push_back(job);
    else
      ++refused;
  }
  EXPECT_GE(refused, 3);  // one running, two waiting
  std::vector<std::future<void>> done;
  for (auto& job : accepted) done.push_back(job->done.get_future());
  batcher.stop();  // answers everything queued
  for (auto& d : done) EXPECT_EQ(d.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_FALSE(batcher.submit(make_job(0, 1, 1, 1)));
}

TEST(ServeBatcher, RunnerErrorReachesEveryJobOfThePass) {
  BatcherOptions options{"m", 1, 4, std::chrono::milliseconds(30), 16};
  Batcher batcher(options, {[](const float*, int, int, int, float*) { throw std::runtime_error("boom"); }},
                  nullptr);
  auto a = make_job(0, 1, 1, 1), b = make_job(1, 1, 1, 1);
  auto fa = a->done.get_future(), fb = b->done.get_future();
  batcher.submit(a);
  batcher.submit(b);
  fa.wait();
  fb.wait();
  EXPECT_EQ(a->error, "boom");
  EXPECT_EQ(b->error, "boom");
}

TEST(ServeMetrics, PrometheusText) {
  Metrics metrics;
  metrics.request_done("m", 200, 0.003);
  metrics.request_done("m", 200, 0.2);
  metrics.request_done("", 404, 0.0001);
  metrics.batch_done("m", 5, 0.01);
  metrics.set_queue_depth("m", 3);
  const std::string text = metrics.render();
  for (const char* line :
       {"perceiver_requests_total{model=\"m\",code=\"200\"} 2\n",
        "perceiver_requests_total{model=\"\",code=\"404\"} 1\n",
        "perceiver_request_duration_seconds_bucket{le=\"0.005\"} 2\n",
        "perceiver_request_duration_seconds_bucket{le=\"+Inf\"} 3\n",
        "perceiver_request_duration_seconds_count 3\n",
        "perceiver_batch_size_bucket{model=\"m\",le=\"4\"} 0\n",
        "perceiver_batch_size_bucket{model=\"m\",le=\"6\"} 1\n", "perceiver_batch_size_sum{model=\"m\"} 5\n",
        "perceiver_queue_depth{model=\"m\"} 3\n", "perceiver_inference_seconds_count{model=\"m\"} 1\n",
        "# TYPE perceiver_batch_size histogram\n"})
    EXPECT_NE(text.find(line), std::string::npos) << line;
  EXPECT_EQ(escape_label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
}
