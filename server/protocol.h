// Open Inference Protocol v2 (KServe "V2", Triton HTTP/REST) messages: the infer request and response JSON,
// Triton's binary tensor data extension (a JSON header followed by raw tensor bytes) and its classification
// extension. Pure functions of bytes; no HTTP and no model here.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace perceiver::server {

// A request the server refuses: the HTTP status (4xx/5xx) and the message for {"error": "..."}.
class HttpError : public std::runtime_error {
 public:
  HttpError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// One input tensor of an infer request. FP32 data in `floats`, BYTES elements in `bytes`.
struct InputTensor {
  std::string name;
  std::string datatype;  // "FP32", "BYTES", ...
  std::vector<int64_t> shape;
  std::vector<float> floats;
  std::vector<std::string> bytes;  // raw element bytes (JSON: the string itself; binary: length-prefixed)
  bool binary = false;             // came as binary data (binary_data_size), not JSON "data"
};

// One output the client asked for ("outputs" of the request).
struct RequestedOutput {
  std::string name;
  bool binary = false;     // "binary_data": true (or the request's "binary_data_output")
  int classification = 0;  // "classification": K (0: the raw tensor)
};

struct InferRequest {
  nlohmann::json id;  // echoed when present (null: absent)
  std::vector<InputTensor> inputs;
  std::vector<RequestedOutput> outputs;  // empty: every output, with the request's binary default
  bool binary_data_output = false;       // request "parameters": {"binary_data_output": true}
};

// Parses `body`. header_length: the Inference-Header-Content-Length header's value (the JSON's length; the
// rest of the body is the binary tensor data) or nullopt (the whole body is JSON). Throws HttpError(400)
// naming the field at fault. JSON BYTES elements are kept as given (decode_base64 is the caller's choice).
InferRequest parse_infer_request(std::string_view body, std::optional<size_t> header_length);

// Number of elements of `shape`; throws HttpError(400) naming `what` for negative dims or overflow.
int64_t element_count(const std::vector<int64_t>& shape, const std::string& what);

// One output tensor of a response: FP32 in `floats` or BYTES in `bytes`.
struct OutputTensor {
  std::string name;
  std::string datatype;
  std::vector<int64_t> shape;
  std::vector<float> floats;
  std::vector<std::string> bytes;
  bool binary = false;  // sent as binary data after the JSON header
};

struct EncodedResponse {
  std::string body;
  std::optional<size_t>
      header_length;         // set when binary data follows the JSON (Inference-Header-Content-Length)
  std::string content_type;  // application/json or application/octet-stream
};

EncodedResponse encode_infer_response(const std::string& model_name, const nlohmann::json& id,
                                      const std::vector<OutputTensor>& outputs);

// The classification extension on one row of scores: the k highest as "<value>:<index>:<label>", highest
// first (ties: lower index first); k is clamped to the row's length.
std::vector<std::string> classification_strings(const float* scores, int count,
                                                const std::vector<std::string>& labels, int k);

// RFC 4648 base64 (standard alphabet, '=' padding required when the length is not a multiple of 4; ASCII
// whitespace ignored). Throws HttpError(400, "<what>: ...") on a bad character or length.
std::string decode_base64(std::string_view text, const std::string& what);
std::string encode_base64(std::string_view bytes);

}  // namespace perceiver::server
