// Minimal libcurl client for the hub: HEAD without redirects, GET with redirects followed by hand so that the
// Authorization header only ever goes to the hub's own origin.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace perceiver::hub {

// "scheme://host:port" of an absolute http(s) URL, lowercased, with the default port filled in; "" if the URL
// cannot be parsed.
std::string url_origin(const std::string& url);

// Percent-encodes every byte outside [A-Za-z0-9-._~] (so "refs/pr/1" becomes "refs%2Fpr%2F1").
std::string url_encode(const std::string& text);

struct HttpResponse {
  bool transport_ok = false;    // false: no complete HTTP exchange (refused, DNS, timeout, connection cut)
  std::string transport_error;  // libcurl's explanation when !transport_ok
  long status = 0;              // 0 when no status line arrived
  std::map<std::string, std::string> headers;  // of the last answer; names lowercased
  std::string url;                             // the URL that gave this answer
  std::string redirect_url;                    // absolute target of a 3xx answer
  std::string body;                            // start of the body of answers other than 200/206 (errors)

  std::string header(const std::string& name) const;  // "" when absent; `name` in lower case
  bool is_redirect() const { return status >= 300 && status < 400 && !redirect_url.empty(); }
};

// Receives the body of a 200 or 206 answer to a GET.
class BodySink {
 public:
  virtual ~BodySink() = default;
  // Called with the answer's status and headers before its first body byte (or after the exchange when the
  // body is empty). Returning false aborts the transfer.
  virtual bool begin(const HttpResponse& response) = 0;
  virtual bool write(const char* data, size_t size) = 0;  // false aborts the transfer
};

struct HttpSettings {
  std::string user_agent;
  std::string token;         // sent as "Authorization: Bearer <token>" ...
  std::string token_origin;  // ... only to URLs of this origin (see url_origin)
  long connect_timeout_s = 10;
  long stall_timeout_s = 30;  // abort when less than 1 byte/s arrives for this long (HEAD: total time)
};

class HttpClient {
 public:
  explicit HttpClient(HttpSettings settings);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // HEAD that follows only redirects within the same origin (renamed repos); a redirect to another origin
  // (a CDN) is returned as is, its target in redirect_url.
  HttpResponse head(const std::string& url);

  // GET that follows up to 10 redirects; asks for "Range: bytes=<range_start>-" when range_start > 0.
  HttpResponse get(const std::string& url, uint64_t range_start, BodySink& sink);

  const HttpSettings& settings() const { return settings_; }

 private:
  HttpResponse perform(const std::string& url, bool head, uint64_t range_start, BodySink* sink);

  HttpSettings settings_;
  void* curl_;  // CURL*, reused so that connections are kept alive between requests
};

}  // namespace perceiver::hub
