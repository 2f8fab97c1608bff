#include "conv_template.h"

#include "error.h"

namespace lowbit {
namespace {

std::string ReplaceFirst(std::string text, const std::string& placeholder, const std::string& value) {
  size_t pos = text.find(placeholder);
  if (pos != std::string::npos) text.replace(pos, placeholder.size(), value);
  return text;
}

// The text parts of a message's content (a string, or OpenAI's [{"type": "text", "text": ...}]).
std::vector<std::string> TextParts(const Json& content, const std::string& role) {
  if (content.is_string()) return {content.get<std::string>()};
  if (!content.is_array()) throw Error("the content of a " + role + " message must be a string or a list of parts");
  std::vector<std::string> parts;
  for (const Json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      throw Error("only text parts ({\"type\": \"text\", \"text\": ...}) are supported in message content");
    parts.push_back(part["text"].get<std::string>());
  }
  return parts;
}

}  // namespace

ConvTemplate ConvTemplate::FromJson(const Json& conv) {
  if (!conv.is_object()) throw Error("conv_template is not an object");
  ConvTemplate t;
  try {
    t.system_template_ = conv.value("system_template", std::string("{system_message}"));
    t.system_message_ = conv.value("system_message", std::string());
    t.roles_ = conv.at("roles").get<std::map<std::string, std::string>>();
    t.role_templates_ = {{"user", "{user_message}"}, {"assistant", "{assistant_message}"}, {"tool", "{tool_message}"}};
    if (conv.contains("role_templates") && !conv["role_templates"].is_null())
      for (const auto& [role, text] : conv["role_templates"].items()) t.role_templates_[role] = text.get<std::string>();
    t.seps_ = conv.value("seps", std::vector<std::string>{""});
    if (t.seps_.empty()) t.seps_ = {""};
    t.role_content_sep_ = conv.value("role_content_sep", std::string());
    t.role_empty_sep_ = conv.value("role_empty_sep", std::string());
    t.add_role_after_system_message_ = conv.value("add_role_after_system_message", true);
    if (conv.contains("system_prefix_token_ids") && !conv["system_prefix_token_ids"].is_null())
      t.system_prefix_token_ids_ = conv["system_prefix_token_ids"].get<std::vector<int32_t>>();
    if (conv.contains("stop_str") && !conv["stop_str"].is_null()) {
      const Json& stops = conv["stop_str"];  // a list, or one string in old configs
      t.stop_str_ = stops.is_string() ? std::vector<std::string>{stops.get<std::string>()}
                                      : stops.get<std::vector<std::string>>();
    }
    if (conv.contains("stop_token_ids") && !conv["stop_token_ids"].is_null())
      t.stop_token_ids_ = conv["stop_token_ids"].get<std::vector<int32_t>>();
  } catch (const Json::exception& e) {
    throw Error("conv_template is malformed (" + FirstLine(e.what()) + ")");
  }
  return t;
}

std::string ConvTemplate::Render(const Json& messages, bool add_generation_prompt) const {
  if (!messages.is_array() || messages.empty()) throw Error("messages must be a non-empty list");
  std::string system;
  bool custom_system = false;
  for (const Json& m : messages) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw Error("every message needs a string \"role\"");
    if (m["role"] == "system") {
      for (const auto& part : TextParts(m.value("content", Json("")), "system")) system += part;
      custom_system = true;
    }
  }
  std::string text = ReplaceFirst(system_template_, "{system_message}", custom_system ? system : system_message_);
  size_t count = 0;  // messages with content, the system's excluded
  auto add = [&](const std::string& role, const Json* content) {
    auto name = roles_.find(role);
    if (name == roles_.end()) throw Error("role \"" + role + "\" is not supported by the model's conv_template");
    if (content == nullptr || content->is_null()) {
      text += name->second + role_empty_sep_;
      return;
    }
    ++count;
    const std::string& sep = seps_[(role == "assistant" ? 1 : 0) % seps_.size()];
    if (add_role_after_system_message_ || text.empty() || count != 1) text += name->second + role_content_sep_;
    auto body = role_templates_.find(role);
    for (const auto& part : TextParts(*content, role))
      text += body == role_templates_.end() ? part : ReplaceFirst(body->second, "{" + role + "_message}", part);
    text += sep;
  };
  for (const Json& m : messages) {
    const std::string role = m["role"].get<std::string>();
    if (role == "system") continue;
    add(role, m.contains("content") ? &m["content"] : nullptr);
  }
  if (add_generation_prompt) add("assistant", nullptr);
  return text;
}

}  // namespace lowbit
