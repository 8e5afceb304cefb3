// dalimix.parse_label: the class index written as text (a WebDataset `.cls` member, e.g. "417\n") -> int32.
#include <cctype>
#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"

namespace dalimix {

using dali::CPUBackend;
using dali::OutputDesc;
using dali::Workspace;

class ParseLabelCPU : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit ParseLabelCPU(const dali::OpSpec &spec) : dali::StatelessOperator<CPUBackend>(spec) {}

 protected:
  bool SetupImpl(std::vector<OutputDesc> &output_desc, const Workspace &ws) override {
    output_desc.resize(1);
    output_desc[0].shape = dali::uniform_list_shape(ws.GetInputBatchSize(0), dali::TensorShape<>{});
    output_desc[0].type = DALI_INT32;
    return true;
  }

  void RunImpl(Workspace &ws) override {
    const auto &in = ws.Input<CPUBackend>(0);
    auto &out = ws.Output<CPUBackend>(0);
    DALI_ENFORCE(in.type() == DALI_UINT8, "dalimix.parse_label: the label members must be read as uint8 bytes");
    for (int i = 0; i < in.num_samples(); i++) {
      const char *text = reinterpret_cast<const char *>(in.tensor<uint8_t>(i));
      int64_t n = in.tensor_shape(i).num_elements();
      int64_t a = 0, b = n;
      while (a < b && std::isspace(static_cast<unsigned char>(text[a]))) a++;
      while (b > a && std::isspace(static_cast<unsigned char>(text[b - 1]))) b--;
      int64_t value = 0;
      bool ok = a < b && b - a <= 9;
      for (int64_t k = a; ok && k < b; k++) {
        ok = text[k] >= '0' && text[k] <= '9';
        value = value * 10 + (text[k] - '0');
      }
      DALI_ENFORCE(ok, dali::make_string("dalimix.parse_label: a .cls member holds \"",
                                         std::string(text, static_cast<size_t>(std::min<int64_t>(n, 32))),
                                         "\", not a class index"));
      *out.mutable_tensor<int32_t>(i) = static_cast<int32_t>(value);
    }
  }
};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__ParseLabel)
    .DocStr("The class index written as decimal text (a WebDataset .cls member) -> an int32 scalar.")
    .NumInput(1)
    .NumOutput(1);

DALI_REGISTER_OPERATOR(dalimix__ParseLabel, ::dalimix::ParseLabelCPU, CPU);

}  // namespace dali
