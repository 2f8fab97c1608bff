// MLC's conv_template (mlc-chat-config.json), rendered as MLC's JSON engine renders a chat request:
// all system messages (else the template's default) fill system_template; each other message is
// its role's name + role_content_sep + the role template with the content + the role's separator
// (seps[1] for the assistant when there are two); a message without content, and the final
// assistant turn, add the role's name + role_empty_sep. The Python twin is ConvTemplate in
// runtime/tokenizer.py; a test renders the same conversations with both.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "json_util.h"

namespace lowbit {

class ConvTemplate {
 public:
  /*! \brief From the conv_template object; an Error names a missing or mistyped field. */
  static ConvTemplate FromJson(const Json& conv);

  /*! \brief The prompt for OpenAI-shaped `messages` (content: a string, null, or text parts),
   *  ending with the assistant's turn when `add_generation_prompt`. */
  std::string Render(const Json& messages, bool add_generation_prompt = true) const;

  const std::vector<int32_t>& system_prefix_token_ids() const { return system_prefix_token_ids_; }
  const std::vector<std::string>& stop_str() const { return stop_str_; }
  const std::vector<int32_t>& stop_token_ids() const { return stop_token_ids_; }

 private:
  std::string system_template_, system_message_, role_content_sep_, role_empty_sep_;
  std::map<std::string, std::string> roles_, role_templates_;
  std::vector<std::string> seps_, stop_str_;
  std::vector<int32_t> system_prefix_token_ids_, stop_token_ids_;
  bool add_role_after_system_message_ = true;
};

}  // namespace lowbit
