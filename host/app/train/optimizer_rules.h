// kohya's rules between the optimizer and the learning rates (train_util.get_optimizer and
// get_scheduler_fix), applied by the trainer before the first step: the scheduler Adafactor's
// relative step needs, the D-adaptation / Prodigy learning-rate advice, and start-up refusals
// where kohya's run would crash at its first step.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace sumi::app {

// The LR scheduler to use: "adafactor" when the adafactor optimizer runs with relative_step
// (kohya replaces --lr_scheduler by adafactor:<lr>), else `scheduler`. Throws when the
// adafactor scheduler is asked for another optimizer. `optimizer` is the plugin's name.
std::string scheduler_for(const std::string& optimizer, const std::map<std::string, std::string>& optimizer_params,
                          const std::string& scheduler);

// D-adaptation / Prodigy: kohya's warnings (lr <= 0.1; several learning rates, of which only the
// first one counts for DAdaptAdaGrad/Adan/AdanIP), and refusals where the reference raises
// (different non-zero group lrs for DAdaptAdam/AdamPreprint/Lion/SGD and Prodigy; DAdaptSGD with
// a first step at lr 0). `base_lrs` are the groups' rates, `first_lrs` those of the first step.
void check_optimizer_lrs(const std::string& optimizer, const std::vector<std::string>& group_names,
                         const std::vector<double>& base_lrs, const std::vector<double>& first_lrs);

// True for the optimizers that estimate their step size (kohya logs lr/d*lr for them).
bool adapts_step_size(const std::string& optimizer);

}  // namespace sumi::app
