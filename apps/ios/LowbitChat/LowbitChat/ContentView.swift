// One screen: model picker, conversation, a text field, Send / Stop.

import LowbitEngine
import SwiftUI

@MainActor
struct ContentView: View {
    @StateObject private var chat = ChatViewModel()
    @State private var draft = ""

    var body: some View {
        NavigationView {
            VStack(spacing: 0) {
                modelPicker
                Divider()
                conversation
                if !chat.status.isEmpty {
                    Text(chat.status)
                        .font(.caption)
                        .foregroundColor(.secondary)
                        .padding(.top, 4)
                }
                inputBar
            }
            .navigationTitle("Lowbit Chat")
            .navigationBarTitleDisplayMode(.inline)
            .toolbar {
                ToolbarItem(placement: .navigationBarTrailing) {
                    Button("New chat") { chat.newChat() }
                        .disabled(chat.isGenerating)
                }
            }
        }
        .navigationViewStyle(StackNavigationViewStyle())
        .onAppear { Task { await chat.loadSelectedModel() } }
        .onChange(of: chat.selectedModelID) { _ in Task { await chat.loadSelectedModel() } }
        .alert(isPresented: showsError) {
            Alert(title: Text("Error"), message: Text(chat.errorMessage ?? ""),
                  dismissButton: .default(Text("OK")) { chat.errorMessage = nil })
        }
    }

    private var showsError: Binding<Bool> {
        Binding(get: { chat.errorMessage != nil }, set: { if !$0 { chat.errorMessage = nil } })
    }

    private var modelPicker: some View {
        HStack {
            Picker("Model", selection: $chat.selectedModelID) {
                ForEach(chat.models) { model in
                    Text(model.modelID).tag(Optional(model.id))
                }
            }
            .pickerStyle(MenuPickerStyle())
            .disabled(chat.isLoading || chat.isGenerating)
            Spacer()
            if chat.isLoading {
                ProgressView()
            }
        }
        .padding(.horizontal)
        .padding(.vertical, 8)
    }

    private var conversation: some View {
        ScrollViewReader { proxy in
            ScrollView {
                LazyVStack(alignment: .leading, spacing: 8) {
                    ForEach(chat.lines) { line in
                        MessageRow(line: line).id(line.id)
                    }
                }
                .padding()
            }
            .onChange(of: chat.lines.last?.text) { _ in
                if let id = chat.lines.last?.id {
                    proxy.scrollTo(id, anchor: .bottom)
                }
            }
        }
    }

    private var inputBar: some View {
        HStack {
            TextField("Message", text: $draft, onCommit: send)
                .textFieldStyle(RoundedBorderTextFieldStyle())
                .disabled(chat.isGenerating)
            if chat.isGenerating {
                Button("Stop") { chat.stop() }
                    .foregroundColor(.red)
            } else {
                Button("Send", action: send)
                    .disabled(!chat.canSend || draft.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            }
        }
        .padding()
    }

    private func send() {
        guard chat.canSend else { return }
        chat.send(draft)
        draft = ""
    }
}

private struct MessageRow: View {
    let line: ChatViewModel.Line

    var body: some View {
        let isUser = line.role == .user
        Text(line.text.isEmpty ? "…" : line.text)
            .padding(10)
            .background(isUser ? Color.accentColor.opacity(0.15) : Color.gray.opacity(0.12))
            .cornerRadius(10)
            .frame(maxWidth: .infinity, alignment: isUser ? .trailing : .leading)
    }
}
