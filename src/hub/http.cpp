#include "hub/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <utility>

namespace perceiver::hub {
namespace {

constexpr size_t kErrorBodyCap = 16 * 1024;
constexpr int kMaxRedirects = 10;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
  return text;
}

struct UrlHandle {
  CURLU* url = curl_url();
  ~UrlHandle() { curl_url_cleanup(url); }
  std::string part(CURLUPart which, unsigned flags = 0) const {
    char* value = nullptr;
    if (curl_url_get(url, which, &value, flags) != CURLUE_OK || !value) return "";
    std::string result = value;
    curl_free(value);
    return result;
  }
};

// State shared with the libcurl callbacks during one exchange.
struct Exchange {
  HttpResponse* response;
  BodySink* sink;
  bool began = false;

  bool body_is_payload() const { return sink && (response->status == 200 || response->status == 206); }
};

size_t on_header(char* buffer, size_t size, size_t count, void* user) {
  auto* exchange = static_cast<Exchange*>(user);
  HttpResponse& response = *exchange->response;
  std::string_view line = trim(std::string_view(buffer, size * count));
  if (line.substr(0, 5) == "HTTP/") {  // a new answer starts (also after "100 Continue")
    response.headers.clear();
    response.status = 0;
    size_t space = line.find(' ');
    if (space != std::string_view::npos) response.status = std::strtol(line.data() + space + 1, nullptr, 10);
  } else if (size_t colon = line.find(':'); colon != std::string_view::npos && colon > 0) {
    response.headers[lower(std::string(line.substr(0, colon)))] = std::string(trim(line.substr(colon + 1)));
  }
  return size * count;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* exchange = static_cast<Exchange*>(user);
  size_t bytes = size * count;
  if (exchange->body_is_payload()) {
    if (!exchange->began) {
      exchange->began = true;
      if (!exchange->sink->begin(*exchange->response)) return 0;
    }
    return exchange->sink->write(data, bytes) ? bytes : 0;
  }
  std::string& body = exchange->response->body;
  if (body.size() < kErrorBodyCap) body.append(data, std::min(bytes, kErrorBodyCap - body.size()));
  return bytes;
}

}  // namespace

std::string HttpResponse::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

std::string url_origin(const std::string& url) {
  UrlHandle handle;
  if (!handle.url || curl_url_set(handle.url, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return "";
  std::string scheme = lower(handle.part(CURLUPART_SCHEME));
  std::string host = lower(handle.part(CURLUPART_HOST));
  std::string port = handle.part(CURLUPART_PORT, CURLU_DEFAULT_PORT);
  if ((scheme != "http" && scheme != "https") || host.empty()) return "";
  return scheme + "://" + host + ":" + port;
}

std::string url_encode(const std::string& text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

HttpClient::HttpClient(HttpSettings settings) : settings_(std::move(settings)) {
  global_init();
  curl_ = curl_easy_init();
}

HttpClient::~HttpClient() {
  if (curl_) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

HttpResponse HttpClient::perform(const std::string& url, bool head, uint64_t range_start, BodySink* sink) {
  HttpResponse response;
  response.url = url;
  CURL* curl = static_cast<CURL*>(curl_);
  if (!curl) {
    response.transport_error = "cannot initialise libcurl";
    return response;
  }
  curl_easy_reset(curl);  // keeps the connection cache
  char error_buffer[CURL_ERROR_SIZE] = {};
  Exchange exchange{&response, sink};

  curl_slist* headers = curl_slist_append(nullptr, "Accept-Encoding: identity");
  // Redirects are never followed by libcurl, so this header cannot leak to another host through it; and it is
  // attached only when this very URL belongs to the hub's origin.
  if (!settings_.token.empty() && !settings_.token_origin.empty() &&
      url_origin(url) == settings_.token_origin) {
    std::string auth = "Authorization: Bearer " + settings_.token;
    headers = curl_slist_append(headers, auth.c_str());
  }
  std::string range = std::to_string(range_start) + "-";

  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS, long(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  curl_easy_setopt(curl, CURLOPT_USERAGENT, settings_.user_agent.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, settings_.connect_timeout_s);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, settings_.stall_timeout_s);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &exchange);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &exchange);
  if (head) {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, settings_.stall_timeout_s);
  }
  if (range_start > 0) curl_easy_setopt(curl, CURLOPT_RANGE, range.c_str());

  CURLcode code = curl_easy_perform(curl);
  curl_slist_free_all(headers);

  if (code == CURLE_OK) {
    response.transport_ok = true;
    char* target = nullptr;
    if (response.status >= 300 && response.status < 400 &&
        curl_easy_getinfo(curl, CURLINFO_REDIRECT_URL, &target) == CURLE_OK && target)
      response.redirect_url = target;
    if (exchange.body_is_payload() && !exchange.began) {  // empty body: the sink still sees the answer
      exchange.began = true;
      if (!sink->begin(response)) {
        response.transport_ok = false;
        response.transport_error = "transfer aborted";
      }
    }
  } else {
    response.transport_error = error_buffer[0] ? error_buffer : curl_easy_strerror(code);
    while (!response.transport_error.empty() && response.transport_error.back() == '\n')
      response.transport_error.pop_back();
  }
  return response;
}

HttpResponse HttpClient::head(const std::string& url) {
  HttpResponse response = perform(url, /*head=*/true, 0, nullptr);
  for (int hop = 0; hop < kMaxRedirects && response.transport_ok && response.is_redirect() &&
                    url_origin(response.redirect_url) == url_origin(url);
       ++hop)
    response = perform(response.redirect_url, /*head=*/true, 0, nullptr);
  return response;
}

HttpResponse HttpClient::get(const std::string& url, uint64_t range_start, BodySink& sink) {
  HttpResponse response = perform(url, /*head=*/false, range_start, &sink);
  for (int hop = 0; hop < kMaxRedirects && response.transport_ok && response.is_redirect(); ++hop) {
    if (url_origin(response.redirect_url).empty()) break;  // not http(s): report the 3xx as is
    response = perform(response.redirect_url, /*head=*/false, range_start, &sink);
  }
  return response;
}

}  // namespace perceiver::hub
