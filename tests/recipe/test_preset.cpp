// Named recipes found in preset folders.
#include <doctest/doctest.h>

#include "sumi/recipe/preset.h"
#include "sumi/recipe/value.h"
#include "test_support.h"

using namespace sumi::recipe;
using sumi::recipe::test::has;
using sumi::recipe::test::TempFile;

TEST_CASE("find_preset tries .toml, .yaml, .yml across folders in order") {
  TempFile a("fit.toml", "");
  TempFile b("fit.yaml", "");
  TempFile c("other.yml", "");
  CHECK(find_preset("fit", {a.dir(), b.dir()}) == a.path());
  CHECK(find_preset("fit", {b.dir(), a.dir()}) == b.path());
  CHECK(find_preset("other", {a.dir(), c.dir()}) == c.path());
  CHECK(list_presets({a.dir(), b.dir(), c.dir()}) == std::vector<std::string>{"fit", "other"});
}

TEST_CASE("a missing preset lists what exists and the nearest name") {
  TempFile a("demo-fit.toml", "");
  CHECK_THROWS_WITH_AS(find_preset("demo-fti", {a.dir()}),
                       has("no preset named 'demo-fti'; did you mean 'demo-fit'? "
                                         "(available: demo-fit; searched"),
                       RecipeError);
  CHECK_THROWS_WITH_AS(find_preset("x", {}), has("no presets found"), RecipeError);
  CHECK_THROWS_AS(find_preset("a/b", {a.dir()}), RecipeError);
}
