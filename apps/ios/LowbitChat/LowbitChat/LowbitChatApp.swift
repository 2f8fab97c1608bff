// LowbitChat: a minimal chat app over LowbitEngine (a template to copy into your own app).

import SwiftUI

@main
struct LowbitChatApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
