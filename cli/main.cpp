// perceiver: the command-line tool. Subcommands live in cli/<name>.cpp.
#include <cstdio>
#include <iostream>
#include <new>

#include "common.h"

int main(int argc, char** argv) {
  CLI::App app{
      "perceiver: Perceiver IO image classifiers (Hugging Face checkpoints) in C++\n"
      "Exit codes: 0 ok, 1 unexpected failure, 2 usage, 3 bad input file, 4 model error, 5 network,\n"
      "6 cannot write output, 70 internal error.",
      "perceiver"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "perceiver 0.1.0");
  perceiver::cli::register_classify(app);
  perceiver::cli::register_preprocess(app);
  perceiver::cli::register_info(app);
  perceiver::cli::register_bench(app);
  perceiver::cli::register_embed(app);
  perceiver::cli::register_train_head(app);
  perceiver::cli::register_eval(app);
  perceiver::cli::register_attention(app);
  perceiver::cli::register_serve(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fprintf(stderr, "run 'perceiver --help' or 'perceiver <command> --help' for usage\n");
    return 2;
  } catch (const perceiver::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
