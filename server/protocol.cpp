#include "protocol.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>

namespace perceiver::server {
namespace {

using nlohmann::json;

[[noreturn]] void bad_request(const std::string& message) { throw HttpError(400, message); }

std::string input_label(size_t index, const std::string& name) {
  return "inputs[" + std::to_string(index) + "]" + (name.empty() ? "" : " '" + name + "'");
}

// Reads one optional parameter object ("parameters": {...}); anything else is an error naming `where`.
const json* parameters_of(const json& object, const std::string& where) {
  auto it = object.find("parameters");
  if (it == object.end() || it->is_null()) return nullptr;
  if (!it->is_object()) bad_request(where + ": \"parameters\" must be an object");
  return &*it;
}

bool bool_parameter(const json* parameters, const char* key, const std::string& where) {
  if (!parameters) return false;
  auto it = parameters->find(key);
  if (it == parameters->end()) return false;
  if (!it->is_boolean()) bad_request(where + ": parameter \"" + key + "\" must be true or false");
  return it->get<bool>();
}

// Flattens (possibly nested) JSON `data` into `sink`, row-major. Nesting deeper than the shape's rank + 1 is
// refused (no unbounded recursion).
template <typename Sink>
void flatten(const json& data, int depth_left, const std::string& where, Sink&& sink) {
  if (data.is_array()) {
    if (depth_left <= 0) bad_request(where + ": \"data\" is nested deeper than the shape");
    for (const json& element : data) flatten(element, depth_left - 1, where, sink);
  } else {
    sink(data);
  }
}

uint32_t read_u32_le(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void append_u32_le(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// BYTES elements from binary data: each a 4-byte little-endian length and that many bytes.
std::vector<std::string> split_binary_bytes(std::string_view data, int64_t count, const std::string& where) {
  std::vector<std::string> elements;
  size_t pos = 0;
  while (pos < data.size()) {
    if (data.size() - pos < 4) bad_request(where + ": binary BYTES data ends inside an element's length");
    const uint32_t length = read_u32_le(data.data() + pos);
    pos += 4;
    if (length > data.size() - pos)
      bad_request(where + ": binary BYTES element of " + std::to_string(length) + " bytes overruns the data");
    if (int64_t(elements.size()) >= count)
      bad_request(where + ": binary data holds more than the shape's " + std::to_string(count) + " elements");
    elements.emplace_back(data.substr(pos, length));
    pos += length;
  }
  if (int64_t(elements.size()) != count)
    bad_request(where + ": binary data holds " + std::to_string(elements.size()) + " elements, shape needs " +
                std::to_string(count));
  return elements;
}

InputTensor parse_input(const json& j, size_t index, std::string_view binary, size_t* binary_pos) {
  if (!j.is_object()) bad_request(input_label(index, "") + ": must be an object");
  InputTensor input;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string())
    bad_request(input_label(index, "") + ": \"name\" must be a string");
  input.name = name->get<std::string>();
  const std::string where = input_label(index, input.name);

  auto datatype = j.find("datatype");
  if (datatype == j.end() || !datatype->is_string()) bad_request(where + ": \"datatype\" must be a string");
  input.datatype = datatype->get<std::string>();
  if (input.datatype != "FP32" && input.datatype != "BYTES")
    bad_request(where + ": datatype '" + input.datatype + "' is not supported (FP32 or BYTES)");

  auto shape = j.find("shape");
  if (shape == j.end() || !shape->is_array()) bad_request(where + ": \"shape\" must be an array of integers");
  if (shape->size() > 8) bad_request(where + ": \"shape\" has more than 8 dimensions");
  for (const json& dim : *shape) {
    if (!dim.is_number_integer()) bad_request(where + ": \"shape\" must be an array of integers");
    input.shape.push_back(dim.get<int64_t>());
  }
  const int64_t count = element_count(input.shape, where);

  const json* parameters = parameters_of(j, where);
  std::optional<int64_t> binary_size;
  if (parameters) {
    auto it = parameters->find("binary_data_size");
    if (it != parameters->end()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 0)
        bad_request(where + ": \"binary_data_size\" must be a non-negative integer");
      binary_size = it->get<int64_t>();
    }
  }
  auto data = j.find("data");

  if (binary_size) {
    if (data != j.end()) bad_request(where + ": has both \"data\" and \"binary_data_size\"");
    const size_t available = binary.size() - *binary_pos;
    if (uint64_t(*binary_size) > available)
      bad_request(where + ": \"binary_data_size\" " + std::to_string(*binary_size) + " exceeds the " +
                  std::to_string(available) + " bytes of binary data left in the body");
    const std::string_view bytes = binary.substr(*binary_pos, size_t(*binary_size));
    *binary_pos += size_t(*binary_size);
    input.binary = true;
    if (input.datatype == "FP32") {
      if (uint64_t(*binary_size) != uint64_t(count) * 4)
        bad_request(where + ": \"binary_data_size\" " + std::to_string(*binary_size) +
                    " != " + std::to_string(count) + " FP32 elements x 4 bytes");
      input.floats.resize(size_t(count));
      std::memcpy(input.floats.data(), bytes.data(),
                  bytes.size());  // little-endian hosts only (x86-64, arm64)
    } else {
      input.bytes = split_binary_bytes(bytes, count, where);
    }
    return input;
  }

  if (data == j.end()) bad_request(where + ": has neither \"data\" nor \"binary_data_size\"");
  const int max_depth = int(input.shape.size()) + 1;
  if (input.datatype == "FP32") {
    input.floats.reserve(size_t(std::min<int64_t>(count, int64_t(data->is_array() ? data->size() : 1))));
    flatten(*data, max_depth, where, [&](const json& element) {
      if (!element.is_number()) bad_request(where + ": FP32 \"data\" holds a non-number");
      if (int64_t(input.floats.size()) >= count)
        bad_request(where + ": \"data\" holds more than the shape's " + std::to_string(count) + " elements");
      input.floats.push_back(element.get<float>());
    });
    if (int64_t(input.floats.size()) != count)
      bad_request(where + ": \"data\" holds " + std::to_string(input.floats.size()) +
                  " elements, shape needs " + std::to_string(count));
  } else {
    flatten(*data, max_depth, where, [&](const json& element) {
      if (!element.is_string()) bad_request(where + ": BYTES \"data\" holds a non-string");
      if (int64_t(input.bytes.size()) >= count)
        bad_request(where + ": \"data\" holds more than the shape's " + std::to_string(count) + " elements");
      input.bytes.push_back(element.get<std::string>());
    });
    if (int64_t(input.bytes.size()) != count)
      bad_request(where + ": \"data\" holds " + std::to_string(input.bytes.size()) +
                  " elements, shape needs " + std::to_string(count));
  }
  return input;
}

int base64_value(unsigned char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '+') return 62;
  if (ch == '/') return 63;
  return -1;
}

}  // namespace

int64_t element_count(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0) bad_request(what + ": \"shape\" has a negative dimension");
    if (dim != 0 && count > std::numeric_limits<int32_t>::max() / dim)
      bad_request(what + ": \"shape\" has too many elements");
    count *= dim;
  }
  return count;
}

InferRequest parse_infer_request(std::string_view body, std::optional<size_t> header_length) {
  std::string_view header = body, binary;
  if (header_length) {
    if (*header_length > body.size())
      bad_request("Inference-Header-Content-Length " + std::to_string(*header_length) +
                  " exceeds the body's " + std::to_string(body.size()) + " bytes");
    header = body.substr(0, *header_length);
    binary = body.substr(*header_length);
  }
  json j;
  try {
    j = json::parse(header.begin(), header.end());
  } catch (const json::parse_error& e) {
    bad_request(std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) bad_request("the request must be a JSON object");

  InferRequest request;
  if (auto id = j.find("id"); id != j.end()) {
    if (!id->is_string()) bad_request("\"id\" must be a string");
    request.id = *id;
  }
  const json* parameters = parameters_of(j, "request");
  request.binary_data_output = bool_parameter(parameters, "binary_data_output", "request");

  auto inputs = j.find("inputs");
  if (inputs == j.end() || !inputs->is_array() || inputs->empty())
    bad_request("\"inputs\" must be a non-empty array");
  size_t binary_pos = 0;
  for (size_t i = 0; i < inputs->size(); ++i)
    request.inputs.push_back(parse_input((*inputs)[i], i, binary, &binary_pos));
  if (binary_pos != binary.size())
    bad_request("the body holds " + std::to_string(binary.size() - binary_pos) +
                " bytes of binary data that no input's \"binary_data_size\" accounts for");

  if (auto outputs = j.find("outputs"); outputs != j.end() && !outputs->is_null()) {
    if (!outputs->is_array()) bad_request("\"outputs\" must be an array");
    for (size_t i = 0; i < outputs->size(); ++i) {
      const json& o = (*outputs)[i];
      const std::string where = "outputs[" + std::to_string(i) + "]";
      if (!o.is_object()) bad_request(where + ": must be an object");
      auto name = o.find("name");
      if (name == o.end() || !name->is_string()) bad_request(where + ": \"name\" must be a string");
      RequestedOutput out;
      out.name = name->get<std::string>();
      const json* out_parameters = parameters_of(o, where);
      out.binary = request.binary_data_output;
      if (out_parameters && out_parameters->contains("binary_data"))
        out.binary = bool_parameter(out_parameters, "binary_data", where);
      if (out_parameters) {
        auto k = out_parameters->find("classification");
        if (k != out_parameters->end()) {
          if (!k->is_number_integer() || k->get<int64_t>() < 1 || k->get<int64_t>() > 1000000)
            bad_request(where + ": \"classification\" must be a positive integer");
          out.classification = int(k->get<int64_t>());
        }
      }
      request.outputs.push_back(out);
    }
  }
  return request;
}

EncodedResponse encode_infer_response(const std::string& model_name, const nlohmann::json& id,
                                      const std::vector<OutputTensor>& outputs) {
  json j;
  j["model_name"] = model_name;
  if (!id.is_null()) j["id"] = id;
  j["outputs"] = json::array();
  std::string binary;
  for (const OutputTensor& out : outputs) {
    json o;
    o["name"] = out.name;
    o["datatype"] = out.datatype;
    o["shape"] = out.shape;
    if (out.binary) {
      const size_t start = binary.size();
      if (out.datatype == "BYTES") {
        for (const std::string& element : out.bytes) {
          append_u32_le(binary, uint32_t(element.size()));
          binary += element;
        }
      } else {
        binary.append(reinterpret_cast<const char*>(out.floats.data()), out.floats.size() * sizeof(float));
      }
      o["parameters"] = {{"binary_data_size", binary.size() - start}};
    } else if (out.datatype == "BYTES") {
      o["data"] = out.bytes;
    } else {
      o["data"] = out.floats;
    }
    j["outputs"].push_back(std::move(o));
  }
  EncodedResponse response;
  // Labels come from config.json: invalid UTF-8 is replaced rather than failing the response.
  response.body = j.dump(-1, ' ', false, json::error_handler_t::replace);
  bool any_binary =
      std::any_of(outputs.begin(), outputs.end(), [](const OutputTensor& o) { return o.binary; });
  if (any_binary) {
    response.header_length = response.body.size();
    response.body += binary;
    response.content_type = "application/octet-stream";
  } else {
    response.content_type = "application/json";
  }
  return response;
}

std::vector<std::string> classification_strings(const float* scores, int count,
                                                const std::vector<std::string>& labels, int k) {
  k = std::clamp(k, 0, count);
  std::vector<int> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int a, int b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); });
  std::vector<std::string> out;
  out.reserve(size_t(k));
  for (int i = 0; i < k; ++i) {
    const int index = order[size_t(i)];
    char value[32];
    std::snprintf(value, sizeof value, "%.9g", double(scores[index]));
    std::string s = std::string(value) + ":" + std::to_string(index);
    if (size_t(index) < labels.size()) s += ":" + labels[size_t(index)];
    out.push_back(std::move(s));
  }
  return out;
}

std::string decode_base64(std::string_view text, const std::string& what) {
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t accumulator = 0;
  int bits = 0, symbols = 0, padding = 0;
  for (char c : text) {
    const unsigned char ch = static_cast<unsigned char>(c);
    if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t') continue;
    if (ch == '=') {
      ++padding;
      ++symbols;
      continue;
    }
    const int value = base64_value(ch);
    if (value < 0 || padding > 0) throw HttpError(400, what + ": invalid base64");
    accumulator = (accumulator << 6) | uint32_t(value);
    bits += 6;
    ++symbols;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((accumulator >> bits) & 0xff));
    }
  }
  if (symbols % 4 != 0 || padding > 2)
    throw HttpError(400, what + ": invalid base64 (bad length or padding)");
  return out;
}

std::string encode_base64(std::string_view bytes) {
  static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8) |
                       uint32_t(uint8_t(bytes[i + 2]));
    for (int s = 18; s >= 0; s -= 6) out.push_back(alphabet[(v >> s) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out.push_back(alphabet[(v >> 18) & 63]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

}  // namespace perceiver::server
