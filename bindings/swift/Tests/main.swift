// Runs the XCTest cases (swiftc builds them as one executable on Linux).
import XCTest

XCTMain([testCase(CallTests.allTests)])
