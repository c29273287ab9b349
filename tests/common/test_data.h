// Paths of the test data the repository carries (tests/data; fixtures copied from the shared
// fixture set), for every test target (SUMI_TEST_DATA is set by sumi_add_test).
#pragma once

#include <string>

namespace sumi::test {

inline std::string data(const std::string& rel) { return std::string(SUMI_TEST_DATA) + "/" + rel; }         // tests/data/<rel>
inline std::string fixture(const std::string& rel) { return std::string(SUMI_TEST_DATA) + "/fixtures/" + rel; }  // tests/data/fixtures/<rel>

}  // namespace sumi::test
